"""Fail fast when timm's pretrained weights are neither cached nor downloadable.

Without a network, ``timm.create_model(..., pretrained=True)`` spends about 50 s in
huggingface_hub's retries before it gives up. ``check_pretrained_available`` answers
in a second or two instead: it finds where timm would read the weights from (its
``_resolve_pretrained_source``: the Hugging Face Hub, a URL, or a local file), accepts
them at once when they are in the local cache (Hugging Face cache or torch hub
checkpoints), refuses at once under ``HF_HUB_OFFLINE``, and otherwise opens one TCP
connection to the server (or to the HTTPS proxy the environment names) with a short
deadline that covers the name lookup too.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Optional
from urllib.parse import urlparse

from sparsifiner.errors import SparsifinerError

CONNECT_TIMEOUT_S = 1.5
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_TRUE = ("1", "on", "yes", "true")


def check_pretrained_available(model_name: str, overlay: Optional[dict] = None) -> None:
    """Raise a one-line SparsifinerError, quickly, if timm could not get ``model_name``'s weights.

    ``overlay`` is timm's ``pretrained_cfg_overlay`` (a local ``file`` there needs no network).
    """
    kind, location = _weight_source(model_name, overlay)
    if kind == "hf-hub":
        repo, filename = location if isinstance(location, tuple) else (location, None)
        if _hf_cached(repo, filename):
            return
        url = _hf_endpoint()
        where = f"the Hugging Face Hub ({repo})"
    elif kind == "url":
        if _torch_hub_cached(location):
            return
        url, where = location, location
    else:  # a local file, a state dict or a local folder: nothing to download
        return
    if _offline():
        raise SparsifinerError(f"cannot download the pretrained weights of {model_name} from {where}: HF_HUB_OFFLINE "
                               "is set and they are not in the local cache; pass local weights with --checkpoint PATH")
    host, port = _target(url)
    problem = _connect(host, port, CONNECT_TIMEOUT_S)
    if problem:
        raise SparsifinerError(f"cannot download the pretrained weights of {model_name} from {where}: {host} is "
                               f"unreachable ({problem}) and they are not in the local cache; pass local weights "
                               "with --checkpoint PATH")


def _weight_source(model_name: str, overlay: Optional[dict] = None):
    """(kind, location) as timm resolves them: "hf-hub", "url", "file", "state_dict", "local-dir" or ""."""
    import timm
    from timm.models._builder import _resolve_pretrained_source

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except (RuntimeError, KeyError, ValueError):
        cfg = None
    if cfg is None:
        return "", None
    return _resolve_pretrained_source({**cfg.to_dict(), **(overlay or {})})


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hf_cache_dir() -> Optional[str]:
    """The Hub cache huggingface_hub uses, read from the environment now (it reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hf_cached(repo: str, filename: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for name in ([filename] if filename else HF_WEIGHT_FILES):
        found = try_to_load_from_cache(repo_id, name, cache_dir=_hf_cache_dir(), revision=revision or None)
        if isinstance(found, str):
            return True
    return False


def _hf_endpoint() -> str:
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"]
    from huggingface_hub import constants

    return constants.ENDPOINT


def _torch_hub_cached(url: str) -> bool:
    import torch

    name = os.path.basename(urlparse(url).path)
    return bool(name) and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", name))


def _target(url: str) -> tuple[str, int]:
    """The host and port a download of ``url`` connects to first: the proxy's when one applies."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    proxy = os.environ.get(f"{parsed.scheme}_proxy") or os.environ.get(f"{parsed.scheme.upper()}_PROXY") \
        or os.environ.get("all_proxy") or os.environ.get("ALL_PROXY")
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    bypass = any(entry.strip() and (entry.strip() == "*" or host.endswith(entry.strip().lstrip(".")))
                 for entry in no_proxy.split(","))
    if proxy and not bypass:
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or host, p.port or 8080
    return host, port


def _connect(host: str, port: int, timeout: float) -> Optional[str]:
    """None when a TCP connection to host:port opens within ``timeout`` seconds (lookup included),
    else the reason. The lookup runs in a daemon thread, since getaddrinfo has no timeout."""
    result: list = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(exc.strerror or type(exc).__name__)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0] if result else f"no answer within {timeout:g} s"
