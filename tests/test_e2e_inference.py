"""The native inference API as users meet it: the official ``ollama`` client and raw HTTP,
against a real server running the real ``smollm2:135m`` (the session's shared server)."""

from __future__ import annotations

import json
import math

import jsonschema
import ollama
import pytest

SMOL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 16}

# A hand-written Go template with tools, in the style of real Ollama templates (chatml + JSON calls).
TOOLS_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}
{{- if .Tools }}
Tools: {{ range .Tools }}{{ .Function.Name }}({{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}:{{ $v.Type }} {{ end }}) {{ end }}
{{- end }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
{{- else }}
{{ .Content }}
{{- end }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def server(shared_server):
    return shared_server


@pytest.fixture
def client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def test_generate_with_the_official_client(client):
    r = client.generate(model=SMOL, prompt="Name a colour.", options=GREEDY)
    assert r.done and r.response
    assert r.eval_count == 16
    parts = list(client.generate(model=SMOL, prompt="Name a colour.", options=GREEDY, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    # greedy: streaming and not give the same text
    assert "".join(p.response for p in parts) == r.response


def test_chat_with_the_official_client(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    r = client.chat(model=SMOL, messages=messages, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content
    streamed = list(client.chat(model=SMOL, messages=messages, options=GREEDY, stream=True))
    assert streamed[-1].done
    assert "".join(p.message.content for p in streamed) == r.message.content


def test_num_predict_is_exact(client):
    for n in (1, 10):
        r = client.generate(model=SMOL, prompt="Tell me a story.", options={"num_predict": n})
        assert r.eval_count == n and r.done_reason == "length"


def test_same_seed_same_output(client):
    opts = {"temperature": 0.9, "seed": 1234, "num_predict": 24}
    a = client.generate(model=SMOL, prompt="Invent a word.", options=opts).response
    b = client.generate(model=SMOL, prompt="Invent a word.", options=opts).response
    assert a == b


def test_context_continues_a_generation(client):
    first = client.generate(model=SMOL, prompt="My name is Ada.", options=GREEDY)
    assert first.context and len(first.context) > first.eval_count
    second = client.generate(model=SMOL, prompt="What is my name?", context=first.context, options=GREEDY)
    assert second.done and len(second.context) > len(first.context)


def test_format_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    r = client.generate(model=SMOL, prompt="Describe a person as JSON.", format=schema,
                        options={"temperature": 0, "num_predict": 64})
    jsonschema.validate(json.loads(r.response), schema)
    # Free-form JSON has no length bound of its own: ask for a small object, leave room to close
    # it, and check that the model did close it (a cut-off answer would prove nothing).
    r = client.chat(model=SMOL, messages=[{"role": "user", "content": "Give me a JSON object with a name and an age."}],
                    format="json", options={"temperature": 0, "num_predict": 256})
    assert r.done_reason == "stop", r.message.content
    assert isinstance(json.loads(r.message.content), dict)


def test_embed_and_legacy_embeddings(client):
    r = client.embed(model=SMOL, input=["The sky is blue.", "Grass is green."])
    assert len(r.embeddings) == 2
    assert all(len(v) == 576 for v in r.embeddings)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in r.embeddings)
    assert r.embeddings[0] != r.embeddings[1]
    assert r.prompt_eval_count > 0
    cut = client.embed(model=SMOL, input="The sky is blue.", dimensions=64)
    assert len(cut.embeddings[0]) == 64
    assert abs(math.sqrt(sum(x * x for x in cut.embeddings[0])) - 1) < 1e-4
    legacy = client.embeddings(model=SMOL, prompt="The sky is blue.")
    assert len(legacy.embedding) == 576
    # legacy vectors are not normalised, and point the same way as the normalised ones
    norm = math.sqrt(sum(x * x for x in legacy.embedding))
    assert abs(norm - 1) > 1e-3
    cosine = sum(a * b for a, b in zip(legacy.embedding, r.embeddings[0])) / norm
    assert cosine > 0.999


def test_final_chunk_fields_raw_ndjson(server):
    with server.client() as http:
        lines = http.post("/api/chat", json={"model": SMOL, "messages": [{"role": "user", "content": "Hi"}],
                                             "options": GREEDY}).text.strip().splitlines()
    chunks = [json.loads(line) for line in lines]
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] in ("stop", "length")
    assert final["message"] == {"role": "assistant", "content": ""}
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_count", "eval_duration"):
        assert isinstance(final[field], int) and final[field] > 0, field
    assert final["total_duration"] >= final["eval_duration"]
    assert "context" not in final


def test_go_template_renders_exactly(server, client):
    client.create(model="tmpl-test", from_=SMOL, template=TOOLS_TEMPLATE, system="Be brief.")
    with server.client() as http:
        r = http.post("/api/chat", json={
            "model": "tmpl-test", "stream": False, "_debug_render_only": True, "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "18C, sunny", "tool_name": "get_weather"},
                {"role": "user", "content": "Thanks"},
            ],
        })
    assert r.status_code == 200, r.text
    expected = (
        "<|im_start|>system\n"
        "Be brief.\n"
        "Tools: get_weather(city:string ) <|im_end|>\n"
        "<|im_start|>user\n"
        "Weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '{"name": "get_weather", "arguments": {"city":"Paris"}}<|im_end|>\n'
        "<|im_start|>tool\n"
        "18C, sunny<|im_end|>\n"
        "<|im_start|>user\n"
        "Thanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert r.json()["_debug_info"]["rendered_template"] == expected


def test_tool_call_in_output_becomes_tool_calls(server, client):
    client.create(model="tools-test", from_=SMOL, template=TOOLS_TEMPLATE)
    call_schema = {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"]},
        },
        "required": ["name", "arguments"],
    }
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # The format grammar makes the model emit a call; the tool-call parser must turn it into tool_calls.
    r = client.chat(model="tools-test", messages=messages, tools=[WEATHER_TOOL], format=call_schema,
                    options={"temperature": 0, "num_predict": 48})
    assert r.message.tool_calls, r.message
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)
    chunks = list(client.chat(model="tools-test", messages=messages, tools=[WEATHER_TOOL], format=call_schema,
                              options={"temperature": 0, "num_predict": 48}, stream=True))
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].message.content == ""
    assert with_calls[0].message.tool_calls[0].function.arguments == call.function.arguments


def test_context_limits(server, client):
    long_prompt = "Tell me about the history of every country in the world. " * 60
    with server.client() as http:
        r = http.post("/api/generate", json={"model": SMOL, "prompt": long_prompt, "stream": False,
                                             "options": {"num_ctx": 256, "num_predict": 4}})
        assert r.status_code == 400
        assert "context length" in r.json()["error"]
    # a chat longer than num_ctx drops its oldest messages and still answers
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Fact {i}: " + "the sea is wide and deep. " * 8},
                    {"role": "assistant", "content": "Noted."}]
    history.append({"role": "user", "content": "Summarise."})
    r = client.chat(model=SMOL, messages=history, options={"num_ctx": 512, "num_predict": 8, "temperature": 0})
    assert r.done and r.prompt_eval_count <= 512
    # with shift off, a generation that reaches num_ctx ends with done_reason "length";
    # with shift on (the default) the window slides and it runs to num_predict
    with server.client() as http:
        body = {"model": SMOL, "prompt": "1, 2, 3, 4, 5,", "raw": True, "stream": False,
                "options": {"num_ctx": 64, "temperature": 0, "num_predict": 200}}
        r = http.post("/api/generate", json={**body, "shift": False}).json()
        assert r["done_reason"] == "length" and r["eval_count"] < 64
        r = http.post("/api/generate", json=body).json()
        assert r["done_reason"] == "length" and r["eval_count"] == 200


def test_errors_have_ollama_shape(server):
    with server.client() as http:
        r = http.post("/api/generate", json={"model": "nope", "prompt": "x"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
        r = http.post("/api/chat", json={"messages": []})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = http.post("/api/generate", content=b"")
        assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
        r = http.post("/api/generate", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]
        r = http.post("/api/generate", json={"model": SMOL, "prompt": 5})
        assert r.status_code == 400 and "GenerateRequest.prompt" in r.json()["error"]
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "x", "options": {"temperature": "hot"}})
        assert (r.status_code, r.json()) == (400, {"error": 'option "temperature" must be of type float32'})
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "x", "keep_alive": "10"})
        assert (r.status_code, r.json()) == (400, {"error": 'time: missing unit in duration "10"'})
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "x", "format": "yaml"})
        assert r.status_code == 400 and "invalid format" in r.json()["error"]
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "x", "images": ["aGVsbG8="]})
        assert r.status_code == 400 and "does not support images" in r.json()["error"]
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "x", "think": True})
        assert (r.status_code, r.json()) == (400, {"error": f'"{SMOL}" does not support thinking'})
        r = http.post("/api/embed", json={"model": SMOL, "input": 5})
        assert (r.status_code, r.json()) == (400, {"error": "invalid input type"})
        r = http.get("/api/nothing-here")
        assert (r.status_code, r.text) == (404, "404 page not found")
        r = http.get("/api/generate")
        assert (r.status_code, r.text) == (405, "405 method not allowed")


def test_docs_curl_examples(server):
    """Every curl example of docs/api.md's inference section runs and gets a 200."""
    import subprocess

    from conftest import REPO, docs_script

    result = subprocess.run(["bash", "-c", docs_script(server.base_url, "inference")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    statuses = result.stdout.split()
    assert len(statuses) == 12 and set(statuses) == {"200"}, (statuses, result.stderr)
    assert '"done_reason":"unload"' in result.stderr and '"embeddings":[[' in result.stderr


# A template that opens a thinking block when asked to think: what the model writes then is
# thinking until it closes the tag (the bundled model rarely does within a few tokens).
THINKING_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}"""


def test_generate_answers_thinking_in_its_own_field(server):
    """As Ollama's /api/generate: with ``think`` the thinking travels in ``thinking``, not ``response``."""
    with server.client() as http:
        r = http.post("/api/create", json={"model": "thinker", "from": SMOL, "template": THINKING_TEMPLATE,
                                           "stream": False})
        assert r.status_code == 200, r.text
        body = {"model": "thinker", "prompt": "Why is the sky blue?", "think": True,
                "options": {"num_predict": 12, "temperature": 0}}
        with http.stream("POST", "/api/generate", json=body) as streamed:
            chunks = [json.loads(line) for line in streamed.iter_lines() if line.strip()]
        thinking = "".join(c.get("thinking", "") for c in chunks)
        response = "".join(c["response"] for c in chunks)
        assert chunks[-1]["done"] is True and thinking.strip()
        assert "<think>" not in response and "<think>" not in thinking
        whole = http.post("/api/generate", json={**body, "stream": False}).json()
        assert (whole["thinking"], whole["response"]) == (thinking, response)
        plain = http.post("/api/generate", json={**body, "think": False, "stream": False}).json()
        assert "thinking" not in plain and plain["response"].strip()
