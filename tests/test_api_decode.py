"""JSON type names in error messages: one table, three vocabularies (api/decode.py)."""

from __future__ import annotations

import json

import pytest

from trillama.api.decode import TypeVocabulary, json_type_name

#: (a JSON text, its type's name in JSON Schema's words, in Go's "cannot unmarshal X", in Go's %T)
CASES = [
    ("null", "null", "null", "<nil>"),
    ("true", "boolean", "bool", "bool"),
    ("false", "boolean", "bool", "bool"),
    ("0", "number", "number", "float64"),
    ("-2.5", "number", "number", "float64"),
    ('"x"', "string", "string", "string"),
    ("[1, 2]", "array", "array", "[]interface {}"),
    ('{"a": 1}', "object", "object", "map[string]interface {}"),
]


@pytest.mark.parametrize(("text", "schema", "go_unmarshal", "go_type"), CASES)
def test_each_json_type_has_its_name_in_every_vocabulary(text: str, schema: str, go_unmarshal: str,
                                                         go_type: str) -> None:
    value = json.loads(text)
    assert json_type_name(value) == schema
    assert json_type_name(value, TypeVocabulary.SCHEMA) == schema
    assert json_type_name(value, TypeVocabulary.GO_UNMARSHAL) == go_unmarshal
    assert json_type_name(value, TypeVocabulary.GO_TYPE) == go_type


def test_the_protocols_name_types_in_their_own_words() -> None:
    from trillama.api.anthropic.translate import system_text
    from trillama.api.decode import structure
    from trillama.api.errors import APIError
    from trillama.api.openai.common import stop_list

    with pytest.raises(APIError, match=r"cannot unmarshal bool into Go value of type dict"):
        structure(True, dict)
    with pytest.raises(APIError, match=r"invalid type for 'stop' field: float64"):
        stop_list(1.5)
    with pytest.raises(APIError, match=r"got boolean"):
        system_text(False)
