"""Build and call the TensorRT-free plugin driver (tests/trt_plugins/plugin_driver) through ctypes.

``build_driver`` compiles pluginDriver.cpp (g++, TensorRT headers only);
``build_emulated_plugin`` compiles the plugin glue with the CPU emulator of the kernels
(emulatedLauncher.cpp + emulator.cpp) into a plugin library that takes host pointers.
``PluginDriver(driver, plugin)`` opens a plugin library the way TensorRT does.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path
from typing import Optional

DRIVER_DIR = Path(__file__).resolve().parent / "plugin_driver"
EMULATOR_DIR = Path(__file__).resolve().parent / "emulator"
PLUGIN_CPP = ("topkMaskedAttentionPlugin.cpp", "topkMaskedAttentionPluginChecks.cpp",
              "topkMaskedAttentionPluginLibrary.cpp")
# nvinfer1::DataType, nvinfer1::PluginFieldType, nvinfer1::TensorFormat, nvinfer1::TensorRTPhase values.
DATA_TYPES = {"float32": 0, "float16": 1, "int8": 2, "int32": 3, "bool": 4, "bfloat16": 7}
FIELD_TYPES = {"float16": 0, "float32": 1, "float64": 2, "int8": 3, "int16": 4, "int32": 5, "char": 6, "int64": 10}
FIELD_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double, "int32": ctypes.c_int32,
                "int64": ctypes.c_int64, "int16": ctypes.c_int16, "int8": ctypes.c_int8}
FORMATS = {"linear": 0, "chw2": 1, "hwc8": 2, "chw4": 3, "chw32": 5}
PHASES = {"build": 0, "runtime": 1}
_CXX = ["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"]


def _run(command: list) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def build_driver(out_dir: Path, tensorrt_include: Path, cuda_home: Path) -> Path:
    library = Path(out_dir) / "libspfdriver.so"
    _run([os.environ.get("CXX", "g++"), *_CXX, "-isystem", str(tensorrt_include), "-isystem", str(cuda_home / "include"),
          str(DRIVER_DIR / "pluginDriver.cpp"), "-o", str(library), "-ldl"])
    return library


def build_emulated_plugin(out_dir: Path, tensorrt_include: Path, plugin_dir: Path, cuda_home: Path) -> Path:
    """The plugin glue + the kernels on the CPU emulator (cudart only for error names)."""
    library = Path(out_dir) / "libspfplugin_emulated.so"
    libdir = next((cuda_home / d for d in ("lib64", "lib") if (cuda_home / d / "libcudart.so").exists()), cuda_home / "lib64")
    _run([os.environ.get("CXX", "g++"), *_CXX, "-isystem", str(tensorrt_include), "-isystem", str(cuda_home / "include"),
          f"-I{plugin_dir}", f"-I{EMULATOR_DIR}", str(EMULATOR_DIR / "emulator.cpp"),
          str(DRIVER_DIR / "emulatedLauncher.cpp"), *[str(plugin_dir / name) for name in PLUGIN_CPP],
          "-o", str(library), f"-L{libdir}", "-lcudart", f"-Wl,-rpath,{libdir}"])
    return library


def _dims(shapes: list) -> tuple:
    ranks = (ctypes.c_int32 * len(shapes))(*[len(s) for s in shapes])
    flat = (ctypes.c_int64 * (8 * len(shapes)))()
    for i, shape in enumerate(shapes):
        for j, d in enumerate(shape):
            flat[8 * i + j] = d
    return ranks, flat


def _types(names: list):
    return (ctypes.c_int32 * len(names))(*[DATA_TYPES[n] for n in names])


class Plugin:
    """An IPluginV3 created by the library (freed with the object)."""

    def __init__(self, driver: "PluginDriver", handle: int):
        self.driver, self.handle, self.lib = driver, handle, driver.lib

    def __del__(self):
        if self.handle:
            self.lib.spd_destroy(ctypes.c_void_p(self.handle))
            self.handle = None

    def info(self) -> dict:
        text = self.driver._text(lambda buf, n: self.lib.spd_plugin_info(ctypes.c_void_p(self.handle), buf, n))
        head, *rows = text.splitlines()
        name, version, namespace, outputs, metadata = head.split("\t")
        fields = {}
        for row in rows:
            field, ftype, length, value = row.split("\t")
            fields[field] = (int(ftype), int(length), float(value) if int(ftype) == FIELD_TYPES["float32"] else int(value))
        return {"name": name, "version": version, "namespace": namespace, "outputs": int(outputs),
                "metadata": metadata, "fields": fields}

    def _derived(self, mode: int) -> Optional["Plugin"]:
        handle = self.lib.spd_roundtrip(ctypes.c_void_p(self.driver.handle), ctypes.c_void_p(self.handle), mode)
        return Plugin(self.driver, handle) if handle else None

    def clone(self) -> Optional["Plugin"]:
        return self._derived(0)

    def roundtrip(self) -> Optional["Plugin"]:
        """getFieldsToSerialize -> createPlugin(kRUNTIME) -> attachToContext."""
        return self._derived(1)

    def output_type(self, types: list) -> tuple:
        out = ctypes.c_int32(-1)
        status = self.lib.spd_output_type(ctypes.c_void_p(self.handle), _types(types), len(types), ctypes.byref(out))
        names = {v: k for k, v in DATA_TYPES.items()}
        return status, names.get(out.value, out.value)

    def output_shape(self, shapes: list) -> tuple:
        ranks, dims = _dims(shapes)
        rank, out = ctypes.c_int32(0), (ctypes.c_int64 * 8)()
        status = self.lib.spd_output_shape(ctypes.c_void_p(self.handle), len(shapes), ranks, dims, ctypes.byref(rank), out)
        return status, tuple(out[:rank.value])

    def supports(self, pos: int, types: list, formats: Optional[list] = None) -> bool:
        formats = formats or ["linear"] * len(types)
        codes = (ctypes.c_int32 * len(formats))(*[FORMATS[f] for f in formats])
        return bool(self.lib.spd_supports(ctypes.c_void_p(self.handle), pos, _types(types), codes, 5, 1))

    def configure(self, shapes: list, types: list, *, min_shapes=None, max_shapes=None, out_type=None) -> tuple:
        ranks, dims = _dims(shapes)
        _, lo = _dims(min_shapes or shapes)
        _, hi = _dims(max_shapes or shapes)
        workspace = ctypes.c_uint64(0)
        status = self.lib.spd_configure(ctypes.c_void_p(self.handle), len(shapes), ranks, dims, lo, hi, _types(types),
                                        DATA_TYPES[out_type or types[0]], ctypes.byref(workspace))
        return status, workspace.value

    def enqueue(self, tensors: list, out, workspace_ptr: int, stream: int = 0) -> int:
        """tensors: q, k, v, coef, basis (torch tensors on the plugin's device); out: q-shaped."""
        ranks, dims = _dims([tuple(t.shape) for t in tensors])
        names = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}
        types = _types([names[str(t.dtype)] for t in tensors])
        pointers = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
        return self.lib.spd_enqueue(ctypes.c_void_p(self.handle), len(tensors), ranks, dims, types, pointers,
                                    ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(workspace_ptr),
                                    ctypes.c_void_p(stream))


class PluginDriver:
    """A plugin library opened as TensorRT opens it (dlopen, setLoggerFinder, getCreators)."""

    def __init__(self, driver_library: Path, plugin_library: Path):
        self.lib = ctypes.CDLL(str(driver_library))
        for name, restype in (("spd_open", ctypes.c_void_p), ("spd_create", ctypes.c_void_p),
                              ("spd_roundtrip", ctypes.c_void_p)):
            getattr(self.lib, name).restype = restype
        error = ctypes.create_string_buffer(512)
        self.handle = self.lib.spd_open(str(plugin_library).encode(), error, len(error))
        if not self.handle:
            raise RuntimeError(f"cannot open {plugin_library}: {error.value.decode()}")

    def _text(self, call) -> str:
        buffer = ctypes.create_string_buffer(8192)
        call(buffer, len(buffer))
        return buffer.value.decode()

    def creator_info(self) -> dict:
        head, *rows = self._text(lambda b, n: self.lib.spd_creator_info(ctypes.c_void_p(self.handle), b, n)).splitlines()
        name, version, namespace, creators = head.split("\t")
        fields = [(r.split("\t")[0], int(r.split("\t")[1]), int(r.split("\t")[2])) for r in rows]
        return {"name": name, "version": version, "namespace": namespace, "creators": int(creators), "fields": fields}

    def last_error(self) -> str:
        return self._text(lambda b, n: self.lib.spd_last_error(b, n))

    def create(self, fields: list, phase: str = "build", layer: str = "blocks.0.attn") -> Optional[Plugin]:
        """fields: (name, field type, value or list of values) tuples, as PluginFields."""
        keep = []
        names = (ctypes.c_char_p * len(fields))()
        types = (ctypes.c_int32 * len(fields))()
        data = (ctypes.c_void_p * len(fields))()
        lengths = (ctypes.c_int32 * len(fields))()
        for i, (name, ftype, value) in enumerate(fields):
            values = value if isinstance(value, (list, tuple)) else [value]
            array = (FIELD_CTYPES[ftype] * len(values))(*values)
            keep.append(array)
            names[i], types[i], lengths[i] = name.encode(), FIELD_TYPES[ftype], len(values)
            data[i] = ctypes.cast(array, ctypes.c_void_p)
        handle = self.lib.spd_create(ctypes.c_void_p(self.handle), layer.encode(), PHASES[phase], len(fields), names,
                                     types, data, lengths)
        return Plugin(self, handle) if handle else None
