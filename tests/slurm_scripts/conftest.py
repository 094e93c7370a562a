"""Run the real slurm/ scripts with bash, without SLURM: stub sbatch / srun / scontrol / scancel on PATH and stub
radar-cache / radar-train in RADAR_BIN record what they were called with (JSON lines in $STUB_LOG)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# sbatch: like the real one, opens the script relative to the caller's folder and refuses a --output whose
# folder does not exist (relative to --chdir, where the job runs); prints a job id.
SBATCH = r'''
import json, os, sys
args = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
script = next(a for a in args if not a.startswith("-"))
if not os.access(script, os.R_OK):
    sys.exit(f"sbatch: error: Unable to open file {script}")
out = opts.get("output") and opts["output"].replace("%%", "%")  # (%% is sbatch's "%"; %j, %x... are in the name)
out_dir = os.path.dirname(os.path.join(opts.get("chdir", os.getcwd()), out or "x")) or "."
if not os.path.isdir(out_dir):
    sys.exit(f"sbatch: error: the folder of --output={out} does not exist")
counter = os.path.join(os.environ["STUB_DIR"], "jobid")
n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1001
open(counter, "w").write(str(n))
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"prog": "sbatch", "argv": args, "cwd": os.getcwd(),
                        "RADAR_DIR": os.environ.get("RADAR_DIR")}) + "\n")
print(n)
'''
# srun: records its options and the SRUN_* variables it reads (Slurm >= 22.05 takes --cpus-per-task from
# SRUN_CPUS_PER_TASK, not from the job), then runs the command after its own options.
SRUN = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"prog": "srun", "argv": args,
                        "env": {k: v for k, v in os.environ.items() if k.startswith("SRUN_")}}) + "\n")
while args and args[0].startswith("-"):
    args.pop(0)
os.execv(args[0], args)
'''
LOGGER = r'''
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:]}) + "\n")
'''
# radar-cache / radar-train / radar-fid: --print_config prints the --config file with the `--a.b value` or `--a.b=value`
# overrides applied, as YAML (like jsonargparse: PyYAML, 80 columns, so long values wrap); --check passes (or fails
# with STUB_CHECK_ERROR); otherwise records argv and the array env, and exits with STUB_EXIT (0).
RADAR = r'''
import json, os, sys, yaml
args = sys.argv[1:]
if "--print_config" in args:
    split = [p for a in args[1:] for p in (a.split("=", 1) if a.startswith("--") and "=" in a else [a])]
    cfg = yaml.safe_load(open(split[split.index("--config") + 1]))
    rest = [a for a in split if a != "--print_config"]
    for key, value in zip(rest[::2], rest[1::2]):
        if key == "--config":
            continue
        *parents, last = key[2:].split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    print("# lightning.pytorch==2.6.6")
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    sys.exit(0)
if "--check" in args:  # radar-cache run --check: refuses with STUB_CHECK_ERROR set, records nothing
    if os.environ.get("STUB_CHECK_ERROR"):
        sys.exit("error: " + os.environ["STUB_CHECK_ERROR"])
    sys.exit(0)
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"prog": os.path.basename(sys.argv[0]), "argv": args,
                        "env": {k: v for k, v in os.environ.items() if k.startswith("SLURM_ARRAY")}}) + "\n")
sys.exit(int(os.environ.get("STUB_EXIT", "0")))  # (e.g. 143: radar-fid stopped by SIGTERM)
'''


def _write(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


class Slurm:
    """A copy of the project's slurm/ folder in a folder with a space in its name, and the stubs."""

    def __init__(self, tmp: Path):
        self.project = tmp / "proj dir"
        (self.project / "slurm").mkdir(parents=True)
        for f in ("env.sh", "cache.sbatch", "verify.sbatch", "train.sbatch", "fid.sbatch", "pipeline.sh"):
            shutil.copy(REPO / "slurm" / f, self.project / "slurm" / f)
        (self.project / "configs").mkdir()
        self.stub_dir = tmp / "stubs"
        self.path_bin, self.radar_bin = self.stub_dir / "path", self.stub_dir / "radar_bin"
        self.path_bin.mkdir(parents=True)
        self.radar_bin.mkdir()
        _write(self.path_bin / "sbatch", SBATCH)
        _write(self.path_bin / "srun", SRUN)
        _write(self.path_bin / "scontrol", LOGGER)
        _write(self.path_bin / "scancel", LOGGER)
        _write(self.radar_bin / "radar-cache", RADAR)
        _write(self.radar_bin / "radar-train", RADAR)
        _write(self.radar_bin / "radar-fid", RADAR)
        self.log = self.stub_dir / "calls.jsonl"
        self.elsewhere = tmp / "elsewhere"
        self.elsewhere.mkdir()

    def config(self, name: str, text: str) -> str:
        (self.project / "configs" / name).write_text(text)
        return f"configs/{name}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "RADAR_")) and k not in ("NUM_WORKERS", "CACHE_DIR", "RUN_DIR")}
        env.update(PATH=f"{self.path_bin}{os.pathsep}{env.get('PATH', '')}", RADAR_BIN=str(self.radar_bin),
                   STUB_DIR=str(self.stub_dir), STUB_LOG=str(self.log))
        env.update(extra)
        return env

    def bash(self, script: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.project / "slurm" / script), *args], env=self.env(**env),
                              cwd=cwd or self.elsewhere, capture_output=True, text=True, timeout=60)

    def calls(self, prog: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if prog is None or c["prog"] == prog]

    @staticmethod
    def option(argv: list[str], name: str) -> str | None:
        """The value of `name` in a command line, given as `name VALUE` or `name=VALUE` (the scripts give folders and
        files with `=`: a value that begins with "-" is one); None when absent."""
        for i, a in enumerate(argv):
            if a == name and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(name + "="):
                return a[len(name) + 1:]
        return None

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)
        (self.stub_dir / "jobid").unlink(missing_ok=True)


@pytest.fixture
def slurm(tmp_path) -> Slurm:
    return Slurm(tmp_path)

