"""``promptsearch serve``: a finished run's best configuration over HTTP until SIGTERM or
Ctrl-C."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from promptsearch.pipelines.errors import UserError


def serve_run(run_dir: Path, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
              engines: int | None = None, auth_token: str | None = None, no_auth: bool = False,
              max_ongoing_requests: int = 64, max_queued_requests: int = 256,
              retry_after: float = 1.0, max_tokens: int = 512, engine_timeout: float = 240.0,
              request_timeout: float = 300.0, verbose: bool = False) -> None:
    """Check the run (finished, its model and data unchanged, auth as the host needs), start
    Ray, the engines (on the run's model and settings, behind the generation cache, so a row
    the run answered is answered with the run's output) and the Serve application; serve
    until SIGTERM or Ctrl-C, then shut both down."""
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.search.runtime import engine_pool
    from promptsearch.search.spec import check_run_inputs
    from promptsearch.serve.app import ServeLimits, build_app, checked_auth_token

    auth_token = checked_auth_token(host, auth_token, no_auth=no_auth)
    # Its model must be the one the run used; its data too, unless the run stored its demos.
    spec = check_run_inputs(run_dir, data=not (run_dir / "fewshot.jsonl").is_file())
    if not (run_dir / "best.yaml").is_file():
        raise UserError(f"{run_dir}: no best.yaml; the run has not finished (use "
                        f"'promptsearch run --resume {run_dir}')")
    PromptConfig.load(run_dir / "best.yaml")
    with engine_pool(spec.model, engines, spec.cpus_per_engine, spec.tensor_parallel_size,
                     spec.max_model_len, verbose=verbose, cache=True) as pool:
        from ray import serve

        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        try:
            serve.start(http_options={"host": host, "port": port,
                                      "request_timeout_s": request_timeout})
            limits = ServeLimits(auth_token=auth_token, max_tokens=max_tokens,
                                 engine_timeout_s=engine_timeout)
            serve.run(build_app(run_dir, pool, limits=limits, replicas=replicas,
                                max_ongoing_requests=max_ongoing_requests,
                                max_queued_requests=max_queued_requests,
                                retry_after_s=retry_after),
                      name="promptsearch", route_prefix="/")
            print(f"serving {spec.task} from {run_dir} at http://{host}:{port} (POST "
                  f"/v1/{spec.task}, /v1/chat/completions; GET /healthz); Ctrl-C stops",
                  file=sys.stderr, flush=True)
            while not stop["now"]:
                time.sleep(0.5)
        finally:
            serve.shutdown()
