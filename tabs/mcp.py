"""``--mcp``: every public endpoint as an MCP tool at ``/gradio_api/mcp/``, and gradio 6.31's gaps mended.

``launch(mcp_server=True)`` (the ``gradio[mcp]`` extra) serves MCP's streamable-HTTP transport at
``/gradio_api/mcp/``, the older SSE one at ``/gradio_api/mcp/sse`` and every tool's schema at
``/gradio_api/mcp/schema``. Each public endpoint of DESIGN.md becomes a tool; private events do not
(gradio lists the API's named endpoints only). A tool's description and the description of each
argument come from the handler's docstring (``Args:``, one line each: gradio reads no more), and
each argument's type and default from the endpoint's input component.

Gradio 6.31's MCP server, on this app, has these gaps; the first is closed by the login middleware,
the others by ``install`` once the server runs, each in one function named for what it does:

- The MCP routes answer without the login. ``tabs.web_guard.LoginRequired`` wraps gradio's whole
  app, the MCP mount included, so every MCP route refuses a caller without the login cookie or an
  ``Authorization`` header, as every other route does (``tests/test_mcp.py`` checks all three).
- ``name_tools_by_endpoint``: a tool is named after its Python function, so ``/generate_image`` was
  the tool ``handler`` and ``/img2img`` was ``img2img_api``.
- ``declare_json_inputs``: a ``gr.JSON`` input gets ``"type": {}``, which is no JSON Schema, so the
  MCP server refused every call of the tool ("{} is not valid under any of the given schemas"):
  chat's ``history`` and every picture input (a hidden ``gr.JSON``, ``tabs.common.api_file_input``).
- ``log_in_loopback``: a tool on the queue (all of ours) runs through gradio's own ``gradio_client``
  calling this server, built without the login, so under ``--auth`` every call failed with "Could
  not load ... as credentials were not provided".
- ``answer_with_files``: a tool with several outputs answered with one text, the Python repr of
  all of them (a job's ``result()`` is a tuple, which gradio keeps as one output), and a gallery's
  images were never sent as images.
"""

from __future__ import annotations

import json
import logging
import typing
from typing import TYPE_CHECKING, Any

import gradio as gr
from anyio.to_thread import run_sync
from gradio import route_utils
from gradio.data_classes import FileDataDict
from gradio_client import Client
from gradio_client.utils import is_file_obj_with_meta

from tabs import credentials

if TYPE_CHECKING:
    from gradio.mcp import GradioMCPServer  # imports mcp: only with --mcp

logger = logging.getLogger(__name__)

#: The MCP schema of ``/chat``'s ``history``: what ``backends.stablelm.requests.parse_history``
#: reads, in its plain form (the API also takes gradio's lists of parts and ``[user, bot]`` pairs).
CHAT_HISTORY: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": "string"}},
        "required": ["role", "content"],
    },
}
#: Schemas of the ``gr.JSON`` inputs that are no file, by endpoint and parameter name.
JSON_INPUTS: dict[tuple[str, str], dict[str, Any]] = {("/chat", "history"): CHAT_HISTORY}


def install(demo: gr.Blocks) -> None:
    """Mend gradio 6.31's MCP server for this app; call right after ``demo.launch``.

    Does nothing when the app was launched without ``mcp_server=True``.

    Raises:
        RuntimeError: the MCP server was asked for but gradio could not start it (``launch(quiet=True)``
            would otherwise swallow gradio's message), or a tool does not fit what this module mends.
    """
    server = demo.mcp_server_obj
    if server is None:
        if demo.mcp_error:
            raise RuntimeError(f"--mcp: {demo.mcp_error}")
        return
    name_tools_by_endpoint(server)
    declare_json_inputs(server)
    log_in_loopback(server, demo.server_app)
    answer_with_files(server)
    logger.info("MCP: %d tools at %s/gradio_api/mcp/ (%s)", len(server.tool_to_endpoint),
                str(demo.local_url).rstrip("/"), ", ".join(server.tool_to_endpoint))


def name_tools_by_endpoint(server: GradioMCPServer) -> None:
    """Name each tool as its endpoint (``generate_image``), not as its Python function.

    Workaround for gradio 6.31: ``GradioMCPServer.get_tool_to_endpoint`` takes the handler's
    ``__name__``, which the contract does not fix (``/generate_image``'s handler is ``handler``).
    """
    names: dict[str, str] = {}
    for endpoint in server.tool_to_endpoint.values():
        name = server.valid_and_unique_tool_name(server.tool_prefix + endpoint.lstrip("/"), set(names))
        names[name] = endpoint
    server.tool_to_endpoint = names


def file_parameters(fn: Any) -> set[str]:
    """The parameters of a handler that take an uploaded file: those typed ``FileDataDict``."""
    hints = typing.get_type_hints(fn)
    return {name for name, hint in hints.items() if hint is FileDataDict or FileDataDict in typing.get_args(hint)}


def declare_json_inputs(server: GradioMCPServer) -> None:
    """Give every ``gr.JSON`` input of a tool a real schema: a file input, or one of ``JSON_INPUTS``.

    Workaround for gradio 6.31: ``gr.JSON.api_info`` is ``{"type": {}}``, not a JSON Schema, so the
    MCP server's own check of a call's arguments failed on every call of the tool. A parameter
    typed ``FileDataDict`` gets ``gr.File``'s schema, which gradio's MCP turns into a string (an
    http(s) URL or a ``data:`` base64 string) and back into an uploaded file, as for any ``gr.File``.
    The server's copy of the API description is changed; the gradio API (``/info``) is not.

    Raises:
        RuntimeError: a ``gr.JSON`` input that is neither a file nor in ``JSON_INPUTS``.
    """
    file_input = gr.File(render=False).api_info()
    for endpoint in server.tool_to_endpoint.values():
        block_fn = server.get_block_fn_from_endpoint_name(endpoint)
        files = file_parameters(block_fn.fn) if block_fn is not None else set()
        for parameter in server.api_info["named_endpoints"][endpoint]["parameters"]:
            name = parameter["parameter_name"]
            if name in files:
                parameter["type"] = file_input
            elif parameter["type"].get("type") == {}:
                if (endpoint, name) not in JSON_INPUTS:
                    raise RuntimeError(f"MCP: {endpoint}'s input {name!r} is a gr.JSON without a schema: type it "
                                       f"FileDataDict if it takes a file, or add it to tabs.mcp.JSON_INPUTS")
                parameter["type"] = JSON_INPUTS[(endpoint, name)]


def log_in_loopback(server: GradioMCPServer, app: Any) -> None:
    """Build the client gradio's MCP server calls this app through with the login (``credentials.headers``).

    Workaround for gradio 6.31: ``GradioMCPServer._get_or_create_client`` builds its
    ``gradio_client.Client`` without credentials and keeps it; under ``--auth`` it could not even
    read the config. This builds the same client, with the same options, plus the login headers,
    in its place. Without a login there is nothing to add and gradio builds its own on first use.
    """
    login = credentials.headers(app)
    if not login:
        return
    # The options are _get_or_create_client's own; its x-gradio-user header marks MCP calls.
    server._client_instance = Client(server.local_url, download_files=False, verbose=False, analytics_enabled=False,
                                     ssl_verify=False, _skip_components=False,
                                     headers={"x-gradio-user": "mcp", **login})


def shown_outputs(outputs: list[Any]) -> list[Any]:
    """The outputs as ``postprocess_output_data`` should see them: each gallery image as a file, JSON as text.

    gradio sends a file output that is an image as an MCP image (and its URL), any other file as
    its URL, and anything else as ``str()`` of it: a gallery (a list of ``{"image": file}``) as the
    Python repr of the list. Here a gallery becomes its images, and a dict or list becomes JSON.
    """
    shown: list[Any] = []
    for output in outputs:
        if isinstance(output, list) and output and all(
                isinstance(item, dict) and is_file_obj_with_meta(item.get("image")) for item in output):
            shown.extend(item["image"] for item in output)
        elif isinstance(output, (dict, list)) and not is_file_obj_with_meta(output):
            shown.append(json.dumps(output, ensure_ascii=False))
        else:
            shown.append(output)
    return shown


def answer_with_files(server: GradioMCPServer) -> None:
    """Answer a tool call with one MCP content per output: images as images, JSON as JSON text.

    Workaround for gradio 6.31: its ``call_tool`` wraps a queued job's ``result()`` in a list, and
    ``result()`` is already a tuple when an endpoint has several outputs (a gallery and its info),
    so the whole tuple came back as one text. This registers, through the ``mcp`` server's own
    ``call_tool`` decorator, the same steps gradio takes for a queued tool (its own helpers, in its
    order), with the outputs split and shown by ``shown_outputs``. Progress notifications, for a
    client that asks for them, are gradio's own.

    Raises:
        RuntimeError: a tool that does not run on the queue (gradio calls those another way).
    """
    for tool, endpoint in server.tool_to_endpoint.items():
        block_fn = server.get_block_fn_from_endpoint_name(endpoint)
        if block_fn is None or not block_fn.queue:
            raise RuntimeError(f"MCP: the tool {tool} ({endpoint}) is not queued; tabs.mcp.answer_with_files "
                               "calls queued endpoints only")
    types = server.types

    @server.mcp_server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        endpoint, args, headers, block_fn = server._prepare_tool_call_args(name, arguments)
        args = server.insert_empty_state(block_fn.inputs, args)
        client = await run_sync(server._get_or_create_client)
        job = client.submit(*args, api_name=endpoint, headers=headers)
        context = server.mcp_server.request_context
        token = context.meta.progressToken if context.meta is not None else None
        if token is None:
            result = await run_sync(job.result)
            outputs = list(result) if len(block_fn.outputs) > 1 else [result]
        else:
            outputs = await server._execute_tool_with_progress(job, token)
        outputs = server.pop_returned_state(block_fn.outputs, outputs)
        root_url = route_utils.get_root_url(request=context.request, route_path=server.get_route_path(context.request),
                                            root_path=server.root_path)
        return types.CallToolResult(content=server.postprocess_output_data(shown_outputs(outputs), root_url))
