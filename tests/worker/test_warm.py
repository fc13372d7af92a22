"""A worker compiles its kernels before it joins the group (worker/warm.py); whatever it compiles later happens on
the event loop, in the middle of the feed (seen: 4.9 s at the first batch of several ticks, whose columns had
another layout than the warm-up's one tick). After the warm-up, a replay of the October scenario — the core the
worker runs: market batches of one and many rows, health, severities, cascades that liquidate, with impact —
must compile nothing new. In a fresh process: this one's kernels may already hold every signature."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, tempfile
    from pathlib import Path
    import msgspec, numba
    import liqwatch.kernels as K
    from liqwatch import scenarios
    from liqwatch.config import load_config
    from liqwatch.replay import replayer
    from liqwatch.worker.warm import warm_kernels

    def signatures():
        out = {}
        for m in pkgutil.iter_modules(K.__path__):
            mod = importlib.import_module(f"liqwatch.kernels.{m.name}")
            for name, f in vars(mod).items():
                if isinstance(f, numba.core.registry.CPUDispatcher):
                    out[f"{m.name}.{name}"] = set(f.signatures)
        return out

    cfg = load_config(scenarios.config_path("oct-2025", "prefix"))
    warm_kernels(cfg)
    warmed = signatures()
    path = Path(tempfile.mkdtemp()) / "oct.jsonl"
    with path.open("wb") as f:
        for ev in scenarios.generate("oct-2025", 2000, seed=3):
            f.write(msgspec.json.encode(ev) + b"\\n")
    run = replayer.replay(cfg, replayer.read_file(path, 0, 2**62, 0, cfg))
    assert run.cascade_samples, "the replay ran no cascade: the test would prove nothing"
    late = {k: v - warmed.get(k, set()) for k, v in signatures().items()}
    late = {k: v for k, v in late.items() if v}
    print("LATE", sorted(late))
""")


def test_a_replay_after_the_warm_up_compiles_no_kernel():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LATE []" in out.stdout, out.stdout


HEAP = textwrap.dedent("""
    import gc, sys
    from liqwatch.worker.warm import settle_heap

    start_up = [[k] for k in range(300_000)]  # what start-up builds and keeps: modules, Faust, the config
    if sys.argv[1] == "settled":
        settle_heap()
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else 0)
    for _ in range(200):  # 4M records: the feed's batches, each held while it is worked on
        held = [[k] for k in range(20_000)]
        scratch = [[k] for k in range(2_000)]
        del held, scratch
    print(len(full))
""")


def _full_collections(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", HEAP, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_the_feeds_batches_die_young_once_the_heap_is_settled():
    # with CPython's defaults each batch is promoted and the whole heap is collected again and again (in the
    # worker ~160 ms a time, every ~0.5 s of ingest); settled, a batch never reaches the old generation
    assert _full_collections("default") >= 10
    assert _full_collections("settled") == 0
