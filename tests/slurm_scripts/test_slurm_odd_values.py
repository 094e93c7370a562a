"""Settings the pipeline passed on wrongly or refused with a message about something else: a folder with a comma
(sbatch splits --export at commas: training read another cache), a folder that begins with "-" (read as an option),
the run folder or cache folder given twice (the job wrote in one folder and resumed, cleaned up and reported in
another), arguments over several lines (all but the first line dropped), a CDPATH, a LOG_DIR that is a file or holds
a "%" (a pattern to sbatch), and a job script submitted from another folder without RADAR_DIR."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _configs(slurm):
    slurm.config("cache.yaml", "output: cache/tiny\n")
    slurm.config("train.yaml", "trainer:\n  default_root_dir: checkpoints/tiny\n")
    return dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", CHECK="0")


def _job_args(call: dict, script: str) -> list[str]:
    """The arguments a submitted job script gets (after the script's path on sbatch's command line)."""
    argv = call["argv"]
    i = next(i for i, a in enumerate(argv) if a.endswith(f"/slurm/{script}"))
    return argv[i + 1:]


def test_a_cache_folder_with_a_comma_is_the_one_training_reads(slurm):
    """(It went to the job as --export=ALL,CACHE_DIR=cache/tiny,v2: sbatch reads `v2` as the name of a variable to
    export, CACHE_DIR=cache/tiny, and training read that other cache.)"""
    proc = slurm.bash("pipeline.sh", **_configs(slurm), CACHE_DIR="cache/tiny,v2", RUN_DIR="run")
    assert proc.returncode == 0, proc.stderr
    cache, verify, train = slurm.calls("sbatch")
    assert not [a for c in (cache, verify, train) for a in c["argv"] if a.startswith("--export=") and "DIR" in a]
    args = _job_args(train, "train.sbatch")
    assert args[:2] == ["configs/train.yaml", "run"] and args[-1] == "--data.caches.path=cache/tiny,v2"
    assert _job_args(cache, "cache.sbatch")[1] == "cache/tiny,v2" and _job_args(verify, "verify.sbatch") == [
        "cache/tiny,v2"]
    slurm.clear()
    proc = slurm.bash("train.sbatch", *args, cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0, proc.stderr
    [fit] = slurm.calls("radar-train")
    assert slurm.option(fit["argv"], "--data.caches.path") == "cache/tiny,v2"


def test_folders_that_begin_with_a_dash_are_folders_in_the_check_and_in_every_job(slurm):
    """(`--output -cache`: "argument --output: expected one argument", on the login node or in the queue.) With the
    project's own radar-cache and radar-train doing the check."""
    import shutil

    shutil.copy(REPO / "configs" / "cache" / "tiny.yaml", slurm.project / "configs" / "cache.yaml")
    shutil.copy(REPO / "configs" / "train" / "tiny.yaml", slurm.project / "configs" / "train.yaml")
    settings = dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", CACHE_DIR="-cache",
                    RUN_DIR="-run", NUM_WORKERS="2")
    proc = slurm.bash("pipeline.sh", **settings, RADAR_BIN=str(Path(sys.executable).parent))
    assert proc.returncode == 0, proc.stderr
    assert not (slurm.project / "-cache").exists() and not (slurm.project / "-run").exists()  # (checks write nothing)
    cache, _, train = slurm.calls("sbatch")
    slurm.clear()
    for script, call in (("cache.sbatch", cache), ("train.sbatch", train)):
        proc = slurm.bash(script, *_job_args(call, script), cwd=slurm.project, RADAR_DIR=str(slurm.project),
                          SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="9")
        assert proc.returncode == 0, proc.stderr
    [run], [fit] = slurm.calls("radar-cache"), slurm.calls("radar-train")
    assert "--output=-cache" in run["argv"] and "--config=configs/cache.yaml" in run["argv"]
    assert "--trainer.default_root_dir=-run" in fit["argv"] and "--data.caches.path=-cache" in fit["argv"]
    slurm.clear()
    proc = slurm.bash("fid.sbatch", "configs/generate.yaml", "-fid", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0 and slurm.calls("radar-fid")[0]["argv"][:2] == ["--config=configs/generate.yaml",
                                                                                "--output=-fid"]


def test_the_folders_and_the_split_are_given_once(slurm):
    """TRAIN_ARGS' --trainer.default_root_dir won over RUN_DIR in the job but not in the check, the checkpoint search,
    the clean-up or the summary (a second submission failed in the queue: 'holds a run already'); CACHE_ARGS'
    --output wrote a cache that verify and training did not read."""
    settings = {**_configs(slurm), "CACHE_DIR": "cache/tiny", "RUN_DIR": "run"}
    for extra, said in [
            (dict(TRAIN_ARGS="--trainer.max_steps 3 --trainer.default_root_dir other"),
             "--trainer.default_root_dir in TRAIN_ARGS: set the run folder with RUN_DIR"),
            (dict(TRAIN_ARGS="--trainer.default_root_dir=other"),
             "--trainer.default_root_dir in TRAIN_ARGS: set the run folder with RUN_DIR"),
            (dict(CACHE_ARGS="--output=elsewhere"), "--output in CACHE_ARGS: set the cache folder with CACHE_DIR"),
            (dict(CACHE_ARGS="--num_workers 2 --worker-index=1"),
             "--num_workers in CACHE_ARGS: set the workers with NUM_WORKERS (the array has one task each)")]:
        proc = slurm.bash("pipeline.sh", **settings, **extra)
        assert proc.returncode == 2 and proc.stderr.splitlines()[0] == f"error: {said}", (extra, proc.stderr)
    assert slurm.calls("sbatch") == []
    proc = slurm.bash("pipeline.sh", **settings, TRAIN_ARGS="--trainer.default_root_dirx 1")  # (another option)
    assert proc.returncode == 0, proc.stderr
    (slurm.project / "run").mkdir()
    proc = slurm.bash("train.sbatch", "configs/train.yaml", "run", "--trainer.default_root_dir", "other",
                      cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: RUN_DIR run is given and an OVERRIDE sets --trainer.default_root_dir: give the run folder once")
    proc = slurm.bash("cache.sbatch", "configs/cache.yaml", "out", "--output=other", cwd=slurm.project,
                      RADAR_DIR=str(slurm.project))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: OUTPUT out is given and an OVERRIDE sets --output: give the cache folder once")
    assert slurm.calls("radar-train") == [] and slurm.calls("radar-cache") == []


def test_arguments_over_several_lines_all_reach_the_job(slurm):
    """(`read -a` stopped at the first newline: the lines after it were dropped, an unknown option among them too.)"""
    proc = slurm.bash("pipeline.sh", **_configs(slurm), CACHE_DIR="c", RUN_DIR="r",
                      TRAIN_ARGS="--trainer.max_steps 3\n--model.lora.rank\t4\n", CACHE_ARGS="--batch_size 2\n--seed 1",
                      SBATCH_ARGS="--qos=high\n--constraint=a100")
    assert proc.returncode == 0, proc.stderr
    cache, verify, train = slurm.calls("sbatch")
    assert _job_args(train, "train.sbatch")[2:] == ["--trainer.max_steps", "3", "--model.lora.rank", "4",
                                                    "--data.caches.path=c"]
    assert _job_args(cache, "cache.sbatch")[2:] == ["--batch_size", "2", "--seed", "1"]
    assert all({"--qos=high", "--constraint=a100"} <= set(c["argv"]) for c in (cache, verify, train))


def test_a_cdpath_a_log_dir_that_is_a_file_or_holds_a_percent_sign(slurm, tmp_path):
    settings = {**_configs(slurm), "CACHE_DIR": "c", "RUN_DIR": "r"}
    proc = slurm.bash("pipeline.sh", "--dry-run", cwd=slurm.project.parent, CDPATH=f".:{tmp_path}", **settings)
    assert proc.returncode == 0, proc.stderr  # (RADAR_DIR read two lines: "cd: ...: No such file or directory")
    (tmp_path / "logfile").write_text("mine\n")
    for args in (["--dry-run"], []):
        proc = slurm.bash("pipeline.sh", *args, LOG_DIR=str(tmp_path / "logfile"), **settings)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: LOG_DIR {tmp_path / 'logfile'} is an existing file: give a folder"), proc.stderr
    assert slurm.calls("sbatch") == [] and (tmp_path / "logfile").read_text() == "mine\n"
    proc = slurm.bash("pipeline.sh", LOG_DIR="logs/100%u", **settings)  # (%u: the user's name, to sbatch)
    assert proc.returncode == 0, proc.stderr
    outputs = [a for c in slurm.calls("sbatch") for a in c["argv"] if a.startswith("--output=")]
    assert outputs == [f"--output={slurm.project}/logs/100%%u/%x-%A_%a.out",
                       *[f"--output={slurm.project}/logs/100%%u/%x-%j.out"] * 2]
    assert (slurm.project / "logs" / "100%u").is_dir() and f"{slurm.project}/logs/100%u/radar-" in proc.stdout


def test_a_job_script_run_from_another_folder_without_radar_dir_says_so(slurm, tmp_path):
    for script in ("cache.sbatch", "train.sbatch", "verify.sbatch", "fid.sbatch"):
        proc = slurm.bash(script, "x", "y", cwd=tmp_path, SLURM_SUBMIT_DIR=str(tmp_path))
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: RADAR_DIR={tmp_path} holds no slurm/env.sh: submit from the project folder, or set RADAR_DIR "
            "to it"), (script, proc.stderr)
