"""The C++ op constants (topkMaskedAttentionSpec.h) agree with sparsifiner/op_spec.py."""
from __future__ import annotations

import re

from sparsifiner import op_spec


def _constants(text: str) -> dict[str, str]:
    """name -> initializer text of every `constexpr ... kNAME{...};` in a header."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"constexpr[^;{]*?\b(k[A-Z0-9_]+)(?:\[[^\]]*\])?\{([^;]*)\};", text)}


def _strings(initializer: str) -> list[str]:
    return re.findall(r'"([^"]*)"', initializer)


def test_op_contract_matches_python(plugin_dir):
    c = _constants((plugin_dir / "topkMaskedAttentionSpec.h").read_text())
    assert _strings(c["kOP_NAME"]) == [op_spec.OP_NAME]
    assert _strings(c["kOP_DOMAIN"]) == [op_spec.OP_DOMAIN]
    assert int(c["kOP_VERSION"]) == op_spec.OP_VERSION
    assert _strings(c["kOP_VERSION_STRING"]) == [str(op_spec.OP_VERSION)]
    assert _strings(c["kTORCH_OP_NAMESPACE"]) == [op_spec.TORCH_OP_NAMESPACE]
    assert _strings(c["kTORCH_OP_NAME"]) == [op_spec.TORCH_OP_NAME]
    assert tuple(_strings(c["kINPUT_NAMES"])) == op_spec.INPUT_NAMES
    assert tuple(_strings(c["kOUTPUT_NAMES"])) == op_spec.OUTPUT_NAMES
    assert int(c["kNB_INPUTS"]) == len(op_spec.INPUT_NAMES)
    assert int(c["kNB_OUTPUTS"]) == len(op_spec.OUTPUT_NAMES)
    assert _strings(c["kATTR_BUDGET"]) == [op_spec.ATTR_BUDGET]
    assert _strings(c["kATTR_SCALE"]) == [op_spec.ATTR_SCALE]
    assert _strings(c["kATTR_CLS_ROWS"]) == [op_spec.ATTR_CLS_ROWS]
    attrs = {"kATTR_BUDGET": op_spec.ATTR_BUDGET, "kATTR_SCALE": op_spec.ATTR_SCALE, "kATTR_CLS_ROWS": op_spec.ATTR_CLS_ROWS}
    assert tuple(attrs[name.strip()] for name in c["kATTRIBUTE_NAMES"].split(",")) == op_spec.ATTRIBUTE_NAMES
    assert int(c["kNB_ATTRIBUTES"]) == len(op_spec.ATTRIBUTE_NAMES)
    assert int(c["kDEFAULT_CLS_ROWS"]) == op_spec.DEFAULT_CLS_ROWS


def test_supported_types_match_python(plugin_dir):
    text = (plugin_dir / "topkMaskedAttentionKernel.h").read_text()
    enum = re.search(r"enum class DataType[^{]*\{([^}]*)\}", text).group(1)
    names = {"kFLOAT": "float32", "kHALF": "float16", "kBF16": "bfloat16"}
    assert tuple(names[m] for m in re.findall(r"\b(k[A-Z0-9]+)\s*=", enum)) == op_spec.SUPPORTED_DTYPES
