"""``--mcp`` from outside: the real app (tiny preset) driven by the ``mcp`` Python client over streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import httpx
import pytest
from jsonschema import Draft202012Validator
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.serving import serve_tiny

T = TypeVar("T")
MCP = "gradio_api/mcp/"
USER, PASSWORD = "agent", "s3cret-pass"
#: DESIGN.md's API table: every public endpoint, and only those, is a tool.
CONTRACT = {"generate_image", "image_variation", "img2img", "generate_video", "orbit", "chat", "status", "unload",
            "generate_image_sd", "img2img_sd", "inpaint", "generate_audio", "png_info"}
#: The tools the served app has (``--tabs image,chat,system``).
SERVED = {"generate_image", "generate_image_sd", "png_info", "chat", "status", "unload"}
#: Tools whose picture inputs gradio's MCP takes as an http(s) URL or a data: base64 string.
FILE_INPUTS = {"image_variation": ["image"], "img2img": ["image"], "generate_video": ["image"], "orbit": ["image"],
               "img2img_sd": ["image"], "inpaint": ["image", "mask"], "png_info": ["image"]}


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs"), "--mcp", "--tabs", "image,chat,system") as (_, url):
        yield url


def on_mcp(url: str, work: Callable[[ClientSession], Awaitable[T]], headers: dict[str, str] | None = None) -> T:
    """Run ``work`` in an initialised MCP session with the app at ``url``."""

    async def run() -> T:
        async with connect(url, headers) as session:
            return await work(session)

    return asyncio.run(run())


@contextlib.asynccontextmanager
async def connect(url: str, headers: dict[str, str] | None) -> AsyncIterator[ClientSession]:
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as http, \
            streamable_http_client(url + MCP, http_client=http) as (read, write, _), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def check_tool(tool: dict[str, Any]) -> None:
    """A tool an agent can use: described, with a valid schema whose every argument has a type and a description."""
    assert tool["description"].strip(), tool["name"]
    schema = tool["inputSchema"]
    Draft202012Validator.check_schema(schema)  # gradio 6.31's gr.JSON "type": {} fails here
    for name, argument in schema["properties"].items():
        assert isinstance(argument.get("type"), str), (tool["name"], name, argument)
        assert argument.get("description", "").strip(), (tool["name"], name)


def test_every_contract_endpoint_is_a_tool_described_for_an_agent(tmp_path: Path) -> None:
    """The whole app's tools (no server needed): names, descriptions, schemas and file inputs."""
    from gradio.mcp import GradioMCPServer

    import app
    from tabs import mcp

    args = app.parse_args(["--preset", "tiny", "--models-dir", str(tmp_path), "--outputs", str(tmp_path)],
                          environ={})
    server = GradioMCPServer(app.build_ui(app.build_studio(args), args.tabs))
    mcp.name_tools_by_endpoint(server)
    mcp.declare_json_inputs(server)
    assert set(server.tool_to_endpoint) == CONTRACT
    for name in CONTRACT:
        description, parameters = server.get_fn_description(server.get_block_fn_from_endpoint_name("/" + name), name)
        schema, files = server.get_input_schema(name, parameters)
        check_tool({"name": name, "description": description, "inputSchema": schema})
        assert sorted(files) == sorted([field] for field in FILE_INPUTS.get(name, [])), name
        for field in FILE_INPUTS.get(name, []):
            assert schema["properties"][field]["type"] == "string" and field in schema["required"]


def test_the_served_tools_are_listed_over_streamable_http(served: str) -> None:
    tools = on_mcp(served, lambda session: session.list_tools()).tools
    assert {tool.name for tool in tools} == SERVED
    for tool in tools:
        check_tool(tool.model_dump())
    chat = next(tool for tool in tools if tool.name == "chat")
    assert chat.inputSchema["properties"]["history"]["type"] == "array"
    assert chat.inputSchema["required"] == ["message"]


def test_the_image_tool_sends_the_image_and_png_info_reads_the_file_back_from_base64(served: str) -> None:
    prompt = "a lighthouse at dawn"
    made = on_mcp(served, lambda session: session.call_tool(
        "generate_image", {"prompt": prompt, "width": 256, "height": 256, "prior_steps": 1, "decoder_steps": 1,
                           "seed": 7}))
    assert not made.isError, texts(made)
    image = next(c for c in made.content if isinstance(c, types.ImageContent))
    assert image.mimeType == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (256, 256)
    url, info = texts(made)
    assert url.startswith("Image URL: http") and url.endswith(".png")
    assert json.loads(info)["seed"] == 7  # the info is JSON, not a Python repr
    # The MCP image is re-encoded by gradio (no text chunks); the saved file carries the parameters.
    saved = httpx.get(url.removeprefix("Image URL: "), timeout=30).content
    read = on_mcp(served, lambda session: session.call_tool(
        "png_info", {"image": "data:image/png;base64," + base64.b64encode(saved).decode()}))
    assert not read.isError, texts(read)
    assert json.loads(texts(read)[0])["prompt"] == prompt


def test_a_refused_value_comes_back_as_an_error_naming_the_field(served: str) -> None:
    result = on_mcp(served, lambda session: session.call_tool("generate_image", {"prompt": "x", "width": 300}))
    assert result.isError and "(width): must be a multiple of 128" in texts(result)[0]


def test_the_chat_and_status_tools_answer_with_and_without_progress(served: str) -> None:
    progress: list[str | None] = []

    async def on_progress(step: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async def work(session: ClientSession) -> tuple[types.CallToolResult, ...]:
        history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        chat = {"message": "and now?", "history": history, "temperature": 0, "max_new_tokens": 8}
        return (await session.call_tool("chat", chat),
                await session.call_tool("chat", chat, progress_callback=on_progress),
                await session.call_tool("status", {}))

    reply, followed, status = on_mcp(served, work)
    assert not reply.isError and texts(reply)[0].strip(), texts(reply)
    assert texts(followed) == texts(reply) and progress  # greedy: the same reply, with gradio's progress notes
    data = json.loads(texts(status)[0])
    assert data["device"] and data["preset"] == "tiny"
    assert any(model["name"].startswith("stablelm.") and model["placement"] != "disk" for model in data["models"])


def test_under_auth_the_mcp_routes_need_the_login_and_queued_tools_work_with_it(
        launch_app: Callable[..., str]) -> None:
    url = launch_app("--mcp", "--auth", f"{USER}:{PASSWORD}", "--tabs", "chat,system")
    with httpx.Client(base_url=url, timeout=30) as http:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "test", "version": "1"}}}
        accept = {"Accept": "application/json, text/event-stream"}
        assert http.post(MCP, json=initialize, headers=accept).status_code == 401
        assert http.get(MCP + "sse", headers={"Accept": "text/event-stream"}).status_code == 401
        assert http.get(MCP + "schema").status_code == 401
        wrong = {**accept, "Authorization": f"Bearer {USER}:wrong"}
        assert http.post(MCP, json=initialize, headers=wrong).status_code == 401
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        schema = http.get(MCP + "schema", headers={"Authorization": f"Basic {basic}"})
        assert schema.status_code == 200 and {tool["name"] for tool in schema.json()} == {"chat", "status", "unload"}

    async def work(session: ClientSession) -> tuple[types.CallToolResult, types.CallToolResult]:
        return (await session.call_tool("chat", {"message": "hi", "temperature": 0, "max_new_tokens": 4}),
                await session.call_tool("status", {}))

    with pytest.raises(BaseException) as refused:  # the mcp client itself, without the header
        on_mcp(url, lambda session: session.list_tools())
    assert "401" in repr(refused.value) + repr(getattr(refused.value, "exceptions", ""))
    reply, status = on_mcp(url, work, headers={"Authorization": f"Bearer {USER}:{PASSWORD}"})
    assert not reply.isError and texts(reply)[0].strip(), texts(reply)  # gradio 6.31: "credentials were not provided"
    assert not status.isError and json.loads(texts(status)[0])["preset"] == "tiny"
