"""Executor ``ray``: the engine's units on a Ray cluster (``pip install mmprep[ray]``).

``run.executor: ray`` makes :func:`mmprep.engine.run` call :func:`run_units_ray` instead of
its process pool. Everything else is the engine's: the plan, the unit ids, the per-unit
function (:meth:`mmprep.engine.UnitRunner.run_unit`), the atomic commit (staging → intent →
``os.replace`` → completion record) and finalize, which runs on the driver once every unit
has its record. A Ray run and a local run of the same pipeline therefore produce the same
bytes and the same manifest counts.

How units run:

* A pool of ``min(workers, units)`` Ray actors, each holding one pipeline built from
  ``pipeline.worker_doc`` (like the local executor's ``_worker_init``), so components and
  encoder models are set up once per actor, not once per unit. Each actor has one unit in
  flight; a finished actor gets the next unit.
* Unit actors request ``num_cpus=1`` and run everything but the encoders: reading, media
  (decode/resize), formatters, writers and the commit.
* Encoders run on **encoder actors** when the cluster has GPUs (and ``run.device`` is not
  ``cpu``): one per GPU (``run.ray_encoder_actors`` caps it), each requesting ``num_gpus=1``;
  Ray pins it to its GPU (``CUDA_VISIBLE_DEVICES``), the models load once on ``cuda:0`` of
  that actor and stay loaded. A unit actor sends its frame, encoder by encoder, to the
  encoder actor ``unit index mod #actors`` and gets the encoded frame and the encoder's
  counters back, so CPU-heavy decoding on many CPU actors feeds few GPU actors. Without GPUs
  the encoders run inside the unit actors, unless ``run.ray_encoder_actors: N`` asks for N
  CPU encoder actors (models loaded N times instead of once per unit actor).
* The output directory must be a path every node sees at the same place (local disk on a
  one-node cluster, NFS/Lustre on several): workers commit into it directly.

Failures:

* An exception inside a unit (a bug, a full disk, a plugin error) is the unit's failure:
  ``on_fail`` records ``<unit>.failed.json`` and the other units go on. It is not retried
  here (it would fail the same way); a rerun redoes it.
* A worker process or node lost mid-unit: Ray restarts the actor and re-runs the unit on it,
  at most ``MMPREP_RAY_MAX_RETRIES`` times (default 2). The lost attempt never became
  visible — its files were in a private staging directory, or listed in the unit's intent
  while being moved; the retry moves the same file names over them and then writes the
  record. When the retries are spent the unit fails and the next run (whose recovery
  removes whatever an orphaned intent lists) redoes it.

``ray`` is imported only inside these functions: importing this module is free.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any, Callable

#: Restarts of a lost actor / re-runs of the unit it held (system failures only).
DEFAULT_MAX_RETRIES = 2


def max_retries() -> int:
    try:
        return max(0, int(os.environ.get("MMPREP_RAY_MAX_RETRIES", DEFAULT_MAX_RETRIES)))
    except ValueError:
        return DEFAULT_MAX_RETRIES


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), reuse an initialised Ray, else start a local
    one. Returns True when this call started/connected Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=address or None,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


class _UnitWorker:
    """Ray actor body: one pipeline, built once, running units with the engine's UnitRunner."""

    def __init__(self, doc: dict, base_dir: str, source: str | None, out: str, device: str, index: int, remote: Any = None):
        from mmprep.config import build_pipeline
        from mmprep.engine import UnitRunner

        os.environ["MMPREP_WORKER_INDEX"] = str(index)
        pipeline = build_pipeline(doc, base_dir=Path(base_dir), source=source, interpolate_env=False)
        if pipeline.encoders and device in ("auto", "cuda"):
            device = "cpu"  # with GPUs the encoders run on encoder actors, never here
        self.runner = UnitRunner(pipeline, Path(out), device=device, remote=remote)

    def use_encoder_actors(self, actors: list) -> None:
        """Send encode stages to ``actors`` (unit index mod len) instead of running them here."""
        import ray

        current: dict[str, Any] = {}

        def encode(i: int, df):
            actor = actors[current["index"] % len(actors)]
            return ray.get(actor.encode.remote(i, df))

        self.runner.encode_remote = encode
        self._current = current

    def run(self, unit: dict) -> dict:
        if getattr(self, "_current", None) is not None:
            self._current["index"] = unit["index"]
        try:
            return self.runner.run_unit(unit)
        except Exception as e:  # keep the remote traceback text for <unit>.failed.json
            e.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            raise

    def ping(self) -> str:
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"


class _EncoderWorker:
    """Ray actor body: the pipeline's encoders, set up once on this actor's device."""

    def __init__(self, doc: dict, base_dir: str, source: str | None, out: str, device: str, index: int, gpu: bool):
        from mmprep.config import build_pipeline
        from mmprep.engine import UnitRunner

        os.environ["MMPREP_WORKER_INDEX"] = str(index)
        pipeline = build_pipeline(doc, base_dir=Path(base_dir), source=source, interpolate_env=False)
        if gpu:
            device = "cuda:0" if device in ("auto", "cuda") else device
        elif device in ("auto", "cuda"):
            device = "cpu"
        self.runner = UnitRunner(pipeline, Path(out), device=device)
        self.runner._setup_encoders()

    def encode(self, i: int, df: Any) -> tuple[Any, dict]:
        return self.runner.encode_local(i, df)

    def ping(self) -> str:
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"


def _gpus_available() -> int:
    import ray

    try:
        return int(ray.cluster_resources().get("GPU", 0))
    except Exception:
        return 0


def _unwrap(exc: BaseException) -> tuple[BaseException, str]:
    """The unit's own exception and its remote traceback, from a Ray task error."""
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) else exc
    tb = getattr(inner, "__traceback_text__", "") or str(exc)
    return inner, tb


def run_units_ray(
    pipeline: Any,
    out: Path,
    todo: list[dict],
    workers: int,
    progress: Any,
    on_fail: Callable[[dict, BaseException, str], None],
    remote: Any = None,
) -> None:
    """Run ``todo`` on Ray; ``progress.update(record)`` per finished unit, ``on_fail`` per failed one."""
    if not todo:
        return
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
    except ImportError as e:
        from mmprep.errors import ConfigError

        raise ConfigError(f"run.executor: ray needs the ray package (pip install 'mmprep[ray]'): {e}") from None

    started = init_ray(pipeline.run_options.ray_address)
    try:
        device = pipeline.run_options.device
        gpus = _gpus_available() if pipeline.encoders and device != "cpu" else 0
        n = max(1, min(workers, len(todo)))
        retries = max_retries()
        doc_ref = ray.put(pipeline.worker_doc)
        args = (str(pipeline.base_dir), pipeline.source_path, str(out), device)
        n_enc = pipeline.run_options.ray_encoder_actors
        n_enc = (min(n_enc or gpus, gpus) if gpus else (n_enc or 0)) if pipeline.encoders else 0
        enc_opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        Encoder = ray.remote(_EncoderWorker).options(max_restarts=retries, max_task_retries=retries, **enc_opts)
        encoders = [Encoder.remote(doc_ref, *args, i, bool(gpus)) for i in range(n_enc)]
        Actor = ray.remote(_UnitWorker).options(max_restarts=retries, max_task_retries=retries, num_cpus=1)
        actors = [Actor.remote(doc_ref, *args, i, remote) for i in range(n)]
        if encoders:
            ray.get([a.use_encoder_actors.remote(encoders) for a in actors])

        queue = list(todo)
        pending: dict[Any, tuple[dict, Any]] = {}

        def submit(actor: Any) -> None:
            if queue:
                unit = queue.pop(0)
                pending[actor.run.remote(unit)] = (unit, actor)

        for a in actors:
            submit(a)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            unit, actor = pending.pop(ref)
            try:
                record = ray.get(ref)
            except RayActorError as e:
                # the actor died and its restarts are spent: the unit fails, the actor is gone
                on_fail(unit, e, f"the Ray worker running this unit died ({retries} retries spent): {e}")
                actors.remove(actor)
                if not actors:
                    for u in queue:
                        on_fail(u, e, "no Ray worker left (all died); rerun to redo this unit")
                    queue.clear()
                continue
            except RayTaskError as e:
                inner, tb = _unwrap(e)
                on_fail(unit, inner, tb)
            except Exception as e:  # object lost, driver-side errors
                on_fail(unit, e, "".join(traceback.format_exception(e)))
            else:
                progress.update(record)
            submit(actor)
        for a in actors + encoders:
            ray.kill(a, no_restart=True)
    finally:
        if started:
            ray.shutdown()


__all__ = ["run_units_ray", "init_ray", "max_retries"]
