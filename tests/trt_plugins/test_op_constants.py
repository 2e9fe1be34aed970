"""The C++ op constants (topkMaskedAttentionSpec.h) agree with sparsifiner/op_spec.py.

That includes the plugin's attribute table kATTRIBUTES, the one field list behind the
creator, serialisation and runtime creation: names, types, defaults and order must equal
op_spec.ATTRIBUTES, so adding an attribute in one place and not the other fails here.
"""
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
    assert int(c["kDEFAULT_CLS_ROWS"]) == op_spec.DEFAULT_CLS_ROWS
    assert _strings(c["kPLUGIN_NAMESPACE"]) == [op_spec.PLUGIN_NAMESPACE]
    assert _strings(c["kPLUGIN_NAMESPACE_ATTR"]) == [op_spec.ATTR_PLUGIN_NAMESPACE]
    assert _strings(c["kPLUGIN_VERSION_ATTR"]) == [op_spec.ATTR_PLUGIN_VERSION]
    assert op_spec.PLUGIN_VERSION == _strings(c["kOP_VERSION_STRING"])[0]


def attribute_table(header: str) -> list[tuple]:
    """(name, "int"/"float", default or None) per row of kATTRIBUTES, in order."""
    c = _constants(header)
    rows = re.findall(r"\{\s*([^,{}]+?),\s*AttributeType::(\w+),\s*(true|false),\s*([^,{}]+?)\s*\}", c["kATTRIBUTES"])

    def resolve(token: str) -> str:
        token = token.strip()
        return c[token] if token in c else token

    table = []
    for name, kind, required, default in rows:
        name = _strings(resolve(name))[0] if '"' in resolve(name) else resolve(name)
        attr_type = {"kINT": "int", "kFLOAT": "float"}[kind]
        value = None if required == "true" else (int if attr_type == "int" else float)(resolve(default))
        table.append((name, attr_type, value))
    return table


def test_plugin_attribute_table_matches_op_spec(plugin_dir):
    table = attribute_table((plugin_dir / "topkMaskedAttentionSpec.h").read_text())
    assert table == [(a.name, a.type, a.default) for a in op_spec.ATTRIBUTES]


def test_attribute_table_parser_sees_a_new_row():
    """A row added to the C++ table (and not to op_spec) is seen and breaks the comparison."""
    header = """constexpr char const* kATTR_BUDGET{"budget"};
    constexpr AttributeSpec kATTRIBUTES[]{
        {kATTR_BUDGET, AttributeType::kINT, true, 0},
        {"tie_fill", AttributeType::kINT, false, 0},
        {"gamma", AttributeType::kFLOAT, false, 0.5},
    };"""
    assert attribute_table(header) == [("budget", "int", None), ("tie_fill", "int", 0), ("gamma", "float", 0.5)]


def test_supported_types_match_python(plugin_dir):
    text = (plugin_dir / "topkMaskedAttentionKernel.h").read_text()
    enum = re.search(r"enum class DataType[^{]*\{([^}]*)\}", text).group(1)
    names = {"kFLOAT": "float32", "kHALF": "float16", "kBF16": "bfloat16"}
    assert tuple(names[m] for m in re.findall(r"\b(k[A-Z0-9]+)\s*=", enum)) == op_spec.SUPPORTED_DTYPES
