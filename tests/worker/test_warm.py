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
