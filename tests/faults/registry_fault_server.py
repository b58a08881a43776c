"""An ASGI app that answers MLflow's REST API the way a broken tracking server does, run as a
real uvicorn subprocess by tests/faults/test_registry_faults.py (tracking URI
`http://127.0.0.1:PORT/<fault>`):

  - `down`    HTTP 503 with a plain-text body, every time (a server in maintenance, a proxy
              whose backend is gone);
  - `denied`  HTTP 403 with MLflow's JSON error body, PERMISSION_DENIED (the server answers,
              but not what the gate needs).

`GET /stats` returns how many requests each fault path received, so a test can tell
"retried to the budget" from "retried for minutes".

Run e.g.: `python -m uvicorn tests.faults.registry_fault_server:app --host 127.0.0.1 --port P`.
"""

from __future__ import annotations

from collections import Counter

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

DENIED_MESSAGE = "User 'alice' has no READ permission on registered model"

app = FastAPI()
_hits: Counter[str] = Counter()


@app.get("/stats")
async def stats() -> dict[str, int]:
    return dict(_hits)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.api_route("/down/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"])
async def down(path: str) -> PlainTextResponse:
    _hits["down"] += 1
    return PlainTextResponse("503 Service Unavailable: tracking server in maintenance", status_code=503)


@app.api_route("/denied/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"])
async def denied(path: str) -> JSONResponse:
    _hits["denied"] += 1
    return JSONResponse({"error_code": "PERMISSION_DENIED", "message": DENIED_MESSAGE}, status_code=403)
