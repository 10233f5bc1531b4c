"""The Go text/template engine: syntax, Go semantics, Ollama's functions, errors.

Every expected string here was worked out by hand from Go's documented rules, not produced by the
code under test.
"""

from __future__ import annotations

import datetime

import pytest

from trillama.actors.prompt import gofuncs
from trillama.actors.prompt.gotemplate import Template, TemplateError, parse_template
from trillama.actors.prompt.govalues import OrderedMap, format_float_json, format_float_v
from trillama.actors.prompt.tmpldata import property_value


def run(source: str, data: object = None) -> str:
    """Execute with a data map that has a Response key, so nothing is appended to the output."""
    base = {"Response": ""}
    if isinstance(data, dict):
        base.update(data)
    return parse_template(source).execute(base)


# -- fields, variables, pipelines ---------------------------------------------------------------


def test_fields_nested_and_dollar():
    data = {"A": {"B": {"C": "deep"}}, "N": "top", "L": [{"Name": "x"}, {"Name": "y"}]}
    assert run("{{ .A.B.C }}|{{ $.N }}|{{ with .A }}{{ .B.C }}-{{ $.N }}{{ end }}", data) == "deep|top|deep-top"
    assert run("{{ (index .L 1).Name }}", data) == "y"


def test_missing_key_prints_no_value_and_is_false():
    # missingkey=zero on a map[string]any yields a nil interface, which Go prints as <no value>.
    assert run("[{{ .Nope }}]{{ if .Nope }}yes{{ else }}no{{ end }}") == "[<no value>]no"


def test_variables_declare_assign_and_scope():
    src = (
        '{{ $x := "a" }}{{ if true }}{{ $x = "b" }}{{ $y := "inner" }}{{ $y }}{{ end }}{{ $x }}'
        "{{ range $i, $v := .L }}{{ $x = $v }}{{ end }}{{ $x }}"
    )
    assert run(src, {"L": ["p", "q"]}) == "innerbq"


def test_variable_declared_in_if_is_not_visible_after_end():
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        parse_template("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


def test_pipeline_passes_value_as_last_argument():
    assert run('{{ "b" | printf "%s-%s" "a" }}|{{ .X | len }}|{{ 3 | eq 3 }}', {"X": "four"}) == "a-b|4|true"


def test_parenthesised_calls_and_chains():
    data = {"M": [{"Role": "user"}, {"Role": "assistant"}]}
    assert run("{{ (index .M 0).Role }} {{ len (slice .M 1) }} {{ eq (len .M) 2 }}", data) == "user 1 true"


def test_literals():
    src = "{{ `raw \\n` }}|{{ \"esc\\t\\u00e9\" }}|{{ 0x1F }}|{{ 1_000 }}|{{ 'a' }}|{{ 1.5e3 }}|{{ -7 }}|{{ true }}|{{ 017 }}"
    assert run(src) == "raw \\n|esc\t\u00e9|31|1000|97|1500|-7|true|15"


def test_dot_with_and_else_with():
    assert run("{{ with .A }}[{{ . }}]{{ else with .B }}<{{ . }}>{{ else }}none{{ end }}", {"A": "", "B": "b"}) == "<b>"
    assert run("{{ with .A }}[{{ . }}]{{ else }}none{{ end }}", {"A": 0}) == "none"


def test_if_else_if_chain():
    src = '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else if eq .R "c" }}C{{ else }}other{{ end }}'
    assert [run(src, {"R": r}) for r in ("a", "b", "c", "d")] == ["A", "B", "C", "other"]


# -- range ------------------------------------------------------------------------------------------


def test_range_list_with_index_and_else():
    src = "{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ else }}empty{{ end }}"
    assert run(src, {"L": ["a", "b"]}) == "0=a;1=b;"
    assert run(src, {"L": []}) == "empty"
    assert run(src, {"L": None}) == "empty"  # nil ranges like an empty map


def test_range_single_variable_gets_the_element():
    assert run("{{ range $e := .L }}{{ $e }}{{ end }}", {"L": ["x", "y"]}) == "xy"


def test_range_over_map_is_in_key_order_and_ordered_map_keeps_insertion():
    assert run("{{ range $k, $v := .M }}{{ $k }}:{{ $v }} {{ end }}", {"M": {"b": 2, "a": 1, "c": 3}}) == "a:1 b:2 c:3 "
    assert run("{{ range $k, $v := .M }}{{ $k }} {{ end }}", {"M": OrderedMap(b=1, a=2)}) == "b a "


def test_range_break_continue_and_integer():
    src = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert run(src, {"L": [1, 2, 3, 4, 5]}) == "13"
    assert run("{{ range 3 }}{{ . }}{{ end }}") == "012"


def test_range_over_string_is_an_error():
    with pytest.raises(TemplateError, match="range can't iterate over abc"):
        run("{{ range .S }}x{{ end }}", {"S": "abc"})


def test_last_element_idiom_from_real_templates():
    src = "{{ range $i, $_ := .L }}{{ $last := eq (len (slice $.L $i)) 1 }}{{ . }}{{ if $last }}!{{ else }},{{ end }}{{ end }}"
    assert run(src, {"L": ["a", "b", "c"]}) == "a,b,c!"


# -- trim markers and comments ------------------------------------------------------------------


def test_trim_markers():
    assert run("a  \n {{- .X -}} \n\t b", {"X": "x"}) == "axb"
    assert run("a {{ .X -}}  b", {"X": "x"}) == "a xb"
    assert run("a  {{- .X }}  b", {"X": "x"}) == "ax  b"
    # "{{-3}}" is the number -3, not a trim marker.
    assert run("a {{-3}} b") == "a -3 b"


def test_comments_are_dropped_and_can_trim():
    assert run("a {{/* one\ntwo */}} b") == "a  b"
    assert run("a {{- /* c */ -}} b") == "ab"


# -- Go truth, comparisons, logic -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, "F"), (0.0, "F"), ("", "F"), ([], "F"), ({}, "F"), (None, "F"), (False, "F"),
        (1, "T"), (-0.5, "T"), ("0", "T"), ([0], "T"), ({"k": None}, "T"), (True, "T"),
        (property_value({}), "T"),  # a struct is always true
    ],
)
def test_go_truthiness(value, expected):
    assert run("{{ if .V }}T{{ else }}F{{ end }}", {"V": value}) == expected


def test_and_or_return_operands_and_short_circuit():
    # or returns the first truthy operand; and returns the first falsy one, else the last.
    assert run('{{ or .A .B "c" }}|{{ and 1 "x" }}|{{ and 0 .Nope.Deeper }}|{{ not .A }}', {"A": "", "B": "b"}) == "b|x|0|true"
    # The second operand would fail if evaluated.
    assert run("{{ or 1 (index .L 9) }}", {"L": []}) == "1"


def test_comparisons():
    src = '{{ eq 1 1 }} {{ eq "a" "b" "a" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1.5 2.5 }}'
    assert run(src) == "true true true true true true false"


def test_eq_with_nil_is_false_not_an_error():
    assert run('{{ eq .Nope "x" }}') == "false"


def test_incompatible_comparisons_fail_like_go():
    with pytest.raises(TemplateError, match="incompatible types for comparison"):
        run('{{ eq 1 "1" }}')
    with pytest.raises(TemplateError, match="incompatible types for comparison"):
        run("{{ lt .F 2 }}", {"F": 1.5})  # float64 against int
    with pytest.raises(TemplateError, match="invalid type for comparison"):
        run("{{ lt true false }}")


# -- builtins ---------------------------------------------------------------------------------------


def test_len_index_slice():
    data = {"S": "héllo", "L": [1, 2, 3, 4], "M": {"k": "v"}}
    # Go's len and slice work on bytes: é is two bytes.
    assert run("{{ len .S }} {{ len .L }} {{ len .M }} {{ slice .S 0 3 }} {{ index .S 0 }}", data) == "6 4 1 hé 104"
    assert run("{{ slice .L 1 3 }} {{ slice .L 2 }} {{ index .L 3 }} {{ index .M \"k\" }} {{ index .M \"x\" }}", data) == "[2 3] [3 4] 4 v <no value>"


def test_a_slice_of_a_list_is_a_view_and_behaves_as_one():
    data = {"L": [1, 2, 3, 4]}
    assert run("{{ $s := slice .L 1 }}{{ len $s }} {{ $s }} {{ index $s 0 }} {{ slice $s 1 2 }} {{ json $s }}"
               "{{ range $i, $v := $s }} {{ $i }}={{ $v }}{{ end }} {{ if slice .L 4 }}x{{ else }}empty{{ end }}",
               data) == "3 [2 3 4] 2 [3] [2,3,4] 0=2 1=3 2=4 empty"
    with pytest.raises(TemplateError, match="index out of range: 5"):
        run("{{ slice (slice .L 1) 5 }}", data)


class _CountingList(list):
    """A list that counts the elements copied out of it by slicing."""

    copied = 0

    def __getitem__(self, index):
        if isinstance(index, slice):
            part = super().__getitem__(index)
            _CountingList.copied += len(part)
            return part
        return super().__getitem__(index)


def test_the_last_message_idiom_does_not_copy_the_rest_of_the_conversation():
    # Ollama's templates find the last message with ``len (slice $.Messages $i)``: a copy of the rest
    # per message made long conversations quadratic (issue 24); Go's slices are views.
    _CountingList.copied = 0
    data = {"L": _CountingList(range(2000))}
    out = run("{{ range $i, $_ := .L }}{{ if eq (len (slice $.L $i)) 1 }}last={{ . }}{{ end }}{{ end }}", data)
    assert out == "last=1999"
    assert _CountingList.copied == 0


def test_index_out_of_range_is_an_error():
    with pytest.raises(TemplateError, match="error calling index: index out of range: 5"):
        run("{{ index .L 5 }}", {"L": [1]})


def test_print_println_printf():
    assert run('{{ print 1 2 "a" "b" 3 }}') == "1 2ab3"  # spaces only between two non-strings
    assert run('{{ println "a" 1 }}') == "a 1\n"
    assert run('{{ printf "%s|%d|%5.2f|%-4s|%q|%v|%t|%x|%03d" "s" 7 3.14159 "ab" "q\\"" .L true 255 5 }}', {"L": [1, "x"]}) == 's|7| 3.14|ab  |"q\\""|[1 x]|true|ff|005'
    assert run('{{ printf "%d %s" "x" }}') == "%!d(string=x) %!s(MISSING)"


def test_escapers():
    assert run("{{ html .S }}", {"S": "<a href='x'>&\""}) == "&lt;a href=&#39;x&#39;&gt;&amp;&#34;"
    assert run("{{ js .S }}", {"S": "it's <b>=\n"}) == "it\\'s \\u003Cb\\u003E\\u003D\\u000A"
    assert run('{{ urlquery "a b&c/d" }}') == "a+b%26c%2Fd"


def test_json_is_go_encoding():
    data = {"X": {"b": [1, 2.5, True, None], "a": "x<y&z>", "c": {"z": 1, "y": "\n"}}}
    assert run("{{ json .X }}", data) == '{"a":"x\\u003cy\\u0026z\\u003e","b":[1,2.5,true,null],"c":{"y":"\\n","z":1}}'
    assert run("{{ json .S }}|{{ json 3 }}|{{ json .N }}", {"S": "é", "N": None}) == '"é"|3|null'


def test_printing_maps_slices_and_floats_like_fmt():
    data = {"M": {"b": 1, "a": [1, 2]}, "F": 1000000.0, "G": 0.00001, "H": 123456.0, "I": 2.5, "J": 3.0}
    assert run("{{ .M }} {{ .F }} {{ .G }} {{ .H }} {{ .I }} {{ .J }}", data) == "map[a:[1 2] b:1] 1e+06 1e-05 123456 2.5 3"


def test_float_formatting_rules():
    assert [format_float_v(x) for x in (1234567.0, 0.0001, -2.5, 1e21, 100.0)] == [
        "1.234567e+06", "0.0001", "-2.5", "1e+21", "100",
    ]
    assert [format_float_json(x) for x in (1e6, 1e21, 1e-7, 3.0, 0.1, 1e20)] == [
        "1000000", "1e+21", "1e-7", "3", "0.1", "100000000000000000000",
    ]


def test_ollama_date_functions(monkeypatch):
    monkeypatch.setattr(gofuncs, "today", lambda: datetime.date(2024, 3, 1))
    assert run('{{ currentDate }} {{ yesterdayDate }} {{ currentDate "ignored" }}') == "2024-03-01 2024-02-29 2024-03-01"


def test_to_typescript_type():
    props = {
        "P": property_value({"type": "string"}),
        "Q": property_value({"type": ["integer", "null"]}),
        "R": property_value({"anyOf": [{"type": "array"}, {"type": "object"}]}),
    }
    src = "{{ toTypeScriptType .P }}|{{ toTypeScriptType .Q }}|{{ toTypeScriptType .R }}|{{ toTypeScriptType 3 }}|{{ .Q.ToTypeScriptType }}"
    assert run(src, props) == "string|number | null|any[] | Record<string, any>|any|number | null"


def test_define_template_and_block():
    src = '{{ define "greet" }}hi {{ . }}{{ end }}{{ template "greet" .Name }}|{{ block "b" .Name }}[{{ . }}]{{ end }}'
    assert run(src, {"Name": "bob"}) == "hi bob|[bob]"


# -- the appended {{ .Response }} and identifiers ---------------------------------------------------


def test_response_is_appended_when_neither_messages_nor_response_is_used():
    t = parse_template("Q: {{ .Prompt }}")
    assert t.execute({"Prompt": "p", "Response": "R"}) == "Q: pR"
    t2 = parse_template("Q: {{ .Prompt }} A: {{ .Response }}!")
    assert t2.execute({"Prompt": "p", "Response": "R"}) == "Q: p A: R!"
    t3 = parse_template("{{ range .Messages }}{{ .Content }}{{ end }}")
    assert t3.execute({"Messages": [], "Response": "R"}) == ""
    # The appended node counts as a use, as in Ollama's Vars().
    assert sorted(parse_template("{{ .Prompt }}").identifiers) == ["prompt", "response"]
    assert not t3.uses("response")


def test_identifiers_are_collected_case_insensitively():
    t = parse_template("{{ if .Tools }}{{ range $.Messages }}{{ .Function.Name }}{{ end }}{{ end }}{{ $x := .Suffix }}")
    # Declarations are not walked, only uses: "$x" is not an identifier until it is read.
    assert {"tools", "messages", "function", "name", "suffix", "$"} <= t.identifiers
    assert "$x" not in t.identifiers
    assert "$x" in parse_template("{{ $x := 1 }}{{ $x }}").identifiers
    assert t.uses("Messages") and t.uses("TOOLS") and not t.uses("prompt")


def test_cut_after_response_drops_everything_after_it():
    t = parse_template("<s>{{ if .System }}{{ .System }}{{ end }}[U]{{ .Prompt }}[A]{{ .Response }}</s>{{ if .X }}x{{ end }}tail")
    assert t.execute_until_response({"System": "S", "Prompt": "P", "Response": ""}) == "<s>S[U]P[A]"
    assert t.execute({"System": "", "Prompt": "P", "Response": "R", "X": 1}) == "<s>[U]P[A]R</s>xtail"


def test_parsed_templates_are_cached():
    assert parse_template("{{ .A }} cached") is parse_template("{{ .A }} cached")
    assert isinstance(parse_template("x"), Template)


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ .A ", "template: :1: unclosed action"),
        ("{{ if .A }}x", "template: :1: unexpected EOF"),
        ("a\n\n{{ end }}", "template: :3: unexpected {{end}}"),
        ("{{ nosuch .A }}", 'template: :1: function "nosuch" not defined'),
        ("{{ $x }}", 'template: :1: undefined variable "$x"'),
        ("{{ if }}{{ end }}", "template: :1: missing value for if"),
        ("{{ .A | 3 }}", "template: :1: non executable command in pipeline stage 2"),
        ('{{ "abc }}', "template: :1: unterminated quoted string"),
        ("{{/* x */ }}", "template: :1: comment ends before closing delimiter"),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        ("{{ (.A }}", "template: :1: unclosed left paren"),
        ("{{ .A) }}", "template: :1: unexpected right paren"),
        ("{{ 3.foo }}", 'template: :1: bad number syntax: "3.f"'),
    ],
)
def test_parse_errors_read_like_go(source, message):
    with pytest.raises(TemplateError) as info:
        parse_template(source)
    assert str(info.value) == message


def test_execution_errors_name_the_node():
    with pytest.raises(TemplateError) as info:
        run("{{ .A.B }}", {"A": "text"})
    assert str(info.value) == 'template: :1:3: executing "" at <.A.B>: can\'t evaluate field B in type string'
    with pytest.raises(TemplateError, match="nil is not a command"):
        run("{{ nil }}")
    with pytest.raises(TemplateError, match="wrong number of args for not: want 1 got 2"):
        run("{{ not 1 2 }}")
    with pytest.raises(TemplateError, match='template "missing" not defined'):
        run('{{ template "missing" . }}')


def test_template_call_without_pipeline_is_rejected_like_ollama():
    # Valid Go, but Ollama's identifier walk refuses it, so creating such a model fails.
    with pytest.raises(TemplateError, match="undefined template specified"):
        parse_template('{{ define "x" }}x{{ end }}{{ template "x" }}')


def test_struct_fields_and_methods():
    prop = property_value({"type": "string", "description": "d"})
    assert run("{{ .P.Description }}|{{ .P.Type }}", {"P": prop}) == "d|string"
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type api.ToolProperty"):
        run("{{ .P.Nope }}", {"P": prop})


def test_runaway_loop_is_stopped(monkeypatch):
    from trillama.actors.prompt import goexec

    monkeypatch.setattr(goexec, "MAX_STEPS", 1000)
    with pytest.raises(TemplateError, match="exceeded 1000 steps"):
        run("{{ range 100000 }}x{{ end }}")
