"""``GET /studio_api/queue_wait``: how long a job waiting in the GPU queue will wait, for the page.

gradio 6.31 tells a waiting job only its place ("queue: 1/1") and, once a function has run, that
function's average time. The page's script (``tabs/keys.py``) asks this route about once a second
while one of its jobs waits, and writes "1 job ahead, about 40 s". The answer is
``Studio.queue_wait``: the running job's time left at its own rate so far, and the average length
of recent jobs, for those waiting between.

It is plain ASGI middleware, as the guards of ``tabs/web_guard.py`` are, so no gradio route is
patched. ``app.launch`` places it behind ``LoginRequired``: with a login set, it answers only a
caller who has logged in, like every other route of the app.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from tabs.web_guard import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

#: The route, as the page's script asks for it below gradio's root path.
PATHS = frozenset({"/studio_api/queue_wait", "/studio_api/queue_wait/"})


def middleware(queue_wait: Callable[[], dict[str, Any]]) -> Middleware:
    """The route for ``launch(app_kwargs={"middleware": [...]})``; it goes after the login guard.

    Args:
        queue_wait: what to answer (the Studio's ``queue_wait``); called on the server's event
            loop, so it must be cheap and never block.
    """
    return Middleware(QueueWait, queue_wait=queue_wait)


class QueueWait:
    """ASGI middleware: answers ``GET /studio_api/queue_wait``; passes every other request on.

    The answer is ``{"running_left_s": float | null, "average_s": float | null}``, never cached:
    it is out of date a second later.
    """

    def __init__(self, app: ASGIApp, queue_wait: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.queue_wait = queue_wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.queue_wait()
        answer = {"running_left_s": wait["running_left_s"], "average_s": wait["average_s"]}
        await JSONResponse(answer, headers={"Cache-Control": "no-store"})(scope, receive, send)
