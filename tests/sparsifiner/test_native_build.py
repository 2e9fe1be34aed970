"""Loaders of the native CPU kernel without building anything: cheap imports and
one-line errors that say what to do when the compiler or the headers are missing."""
import subprocess
import sys

import pytest

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import cpu_binding, native_build
from sparsifiner.runtime import ort_native


def test_imports_build_nothing():
    script = ("import sys, sparsifiner.ops.cpu_binding, sparsifiner.runtime.ort_native, sparsifiner.runtime.ort; "
              "print('onnxruntime' in sys.modules, 'torch.utils.cpp_extension' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_compiler_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native_build, "find_compiler", lambda: None)
    monkeypatch.setitem(cpu_binding._state, "loaded", None)
    for build in (ort_native.native_library_path, cpu_binding.load_cpu_binding):
        with pytest.raises(SparsifinerError, match="needs a C[+][+]17 compiler") as info:
            build()
        assert "\n" not in str(info.value)


def test_missing_headers_say_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(ort_native.FETCH_ENV, "0")
    monkeypatch.delenv(ort_native.INCLUDE_ENV, raising=False)
    monkeypatch.setattr(ort_native, "SYSTEM_INCLUDES", ())
    with pytest.raises(SparsifinerError, match="SPARSIFINER_ORT_INCLUDE"):
        ort_native.native_library_path()
    assert not ort_native.native_available()
    monkeypatch.setenv(ort_native.INCLUDE_ENV, str(tmp_path))
    with pytest.raises(SparsifinerError, match="holds no onnxruntime_cxx_api.h"):
        ort_native.find_ort_headers()


def test_old_headers_are_refused(monkeypatch, tmp_path):
    (tmp_path / "onnxruntime_cxx_api.h").write_text("")
    (tmp_path / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 11\n")
    monkeypatch.setenv(ort_native.INCLUDE_ENV, str(tmp_path))
    with pytest.raises(SparsifinerError, match="API 11"):
        ort_native.find_ort_headers()


def test_cache_tags_follow_sources_flags_and_arch(monkeypatch):
    files = native_build.kernel_files(ort_native.SOURCES)
    assert len(files) == 4 and all(f.is_file() for f in files)
    base = native_build.build_tag("ort", files, ["-I/x"])
    assert native_build.build_tag("ort", files, ["-I/y"]) != base
    monkeypatch.setenv(native_build.ARCH_ENV, "x86-64-v2")
    assert native_build.build_tag("ort", files, ["-I/x"]) != base


def test_the_library_reports_its_isa_only_when_built(monkeypatch, tmp_path):
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(ort_native, "SYSTEM_INCLUDES", ())
    monkeypatch.setenv(ort_native.FETCH_ENV, "0")
    with pytest.raises(SparsifinerError, match="not built"):
        ort_native.native_library_path(build=False)
