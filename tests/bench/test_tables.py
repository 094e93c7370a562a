"""python -m radar_train.bench.tables: markdown tables from result files, written between markers."""
import json

import pytest

from radar_train.bench.tables import load_results, main, render

DOC = {
    "device": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "commit": "abc1234", "date": "2026-11-20T10:00:00Z",
    "command": "python -m radar_train.bench.gpu_suite --official_var .official_var",
    "rows": [
        {"preset": "var-d16", "model": "preset var-d16", "method": "official", "engine": "official", "noise": "official",
         "batch_size": 32, "images_per_s": 100.0, "images_per_s_e2e": 80.0, "peak_memory_bytes": 3 * 2**30},
        {"preset": "var-d16", "model": "preset var-d16", "method": "vanilla", "engine": "eager", "noise": "per_sample",
         "batch_size": 32, "images_per_s": 150.0, "images_per_s_e2e": 110.0, "vs_official": 1.5,
         "vs_official_e2e": 1.375, "speedup_vs_vanilla": 1.0, "peak_memory_bytes": 2**30},
        {"preset": "var-d16", "model": "preset var-d16", "method": "pair:fastvar:default", "engine": "eager",
         "noise": "per_sample", "batch_size": 32, "images_per_s": 5.25, "images_per_s_e2e": None,
         "pair_vs_separate": 0.7321},
        {"preset": "var-d16", "model": "preset var-d16", "method": "vanilla", "engine": "graph", "noise": "per_sample",
         "batch_size": 32, "images_per_s": None, "skipped": "NotImplementedError: no | forks"},
        {"preset": "tiny", "model": "tiny_a (tests/fixtures/tiny_a/config.json)", "method": "decode", "engine": "eager",
         "noise": None, "batch_size": 1, "images_per_s": 0.5, "images_per_s_e2e": None},
    ],
}


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "2026-11-20-h200.json").write_text(json.dumps(DOC))
    older = dict(DOC, date="2026-10-01T00:00:00Z", commit="old0000")
    (tmp_path / "gpu" / "2026-10-01-h100.json").write_text(json.dumps(older))
    return tmp_path


def test_render_has_provenance_and_formatted_rows():
    lines = render(DOC).splitlines()
    assert lines[0] == ("2026-11-20T10:00:00Z · NVIDIA H200 · torch 2.11.0+cu130, CUDA 13.0 · commit `abc1234` · "
                        "`python -m radar_train.bench.gpu_suite --official_var .official_var`")
    assert lines[2].startswith("| preset | method | engine | noise | batch | images/s | images/s e2e | vs official |")
    assert lines[4] == "| var-d16 | official | official | official | 32 | 100.0 | 80.0 | - | - | - | - | 3.00 GiB |"
    assert lines[5] == "| var-d16 | vanilla | eager | per_sample | 32 | 150.0 | 110.0 | 1.50× | 1.38× | 1.00× | - | 1.00 GiB |"
    assert lines[6] == "| var-d16 | pair:fastvar:default | eager | per_sample | 32 | 5.25 | - | - | - | - | 0.732 | - |"
    assert lines[7] == "| var-d16 | vanilla | graph | per_sample | 32 | skipped: NotImplementedError: no / forks | - | - | - | - | - | - |"
    assert lines[8] == "| tiny (tiny_a) | decode | eager | - | 1 | 0.500 | - | - | - | - | - | - |"


def test_latest_is_the_newest_file_of_a_folder(root):
    docs = load_results(root)
    assert set(docs) == {"gpu/2026-11-20-h200", "gpu/2026-10-01-h100", "gpu/latest"}
    assert docs["gpu/latest"]["commit"] == "abc1234"


def test_write_fills_only_the_marked_blocks_and_check_reports(root, tmp_path, capsys):
    md = tmp_path / "README.md"
    text = "# Title\n\n<!-- table:gpu/latest -->\nold table\n<!-- /table:gpu/latest -->\n\nafter\n"
    md.write_text(text)
    assert main(["--root", str(root), "--write", str(md), "--check"]) == 1
    assert md.read_text() == text
    assert main(["--root", str(root), "--write", str(md)]) == 0
    new = md.read_text()
    assert new == text.replace("old table\n", render(DOC) + "\n")
    assert main(["--root", str(root), "--write", str(md), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("no markers here\n", "no <!-- table:NAME -->"),
    ("<!-- table:gpu/nope -->\n<!-- /table:gpu/nope -->\n", "no result file for table(s) gpu/nope"),
    ("<!-- table:gpu/latest -->\nunclosed\n", "<!-- table:gpu/latest --> has no matching"),
])
def test_bad_markdown_is_one_error_line_and_left_alone(root, tmp_path, capsys, text, message):
    md = tmp_path / "README.md"
    md.write_text(text)
    assert main(["--root", str(root), "--write", str(md)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert md.read_text() == text


def test_a_file_that_is_no_result_is_skipped_unless_a_table_names_it(root, tmp_path, capsys):
    (root / "gpu" / "notes.json").write_text('["not", "a", "result"]')
    assert main(["--root", str(root)]) == 0
    assert "notes" not in capsys.readouterr().out
    md = tmp_path / "README.md"
    md.write_text("<!-- table:gpu/notes -->\n<!-- /table:gpu/notes -->\n")
    assert main(["--root", str(root), "--write", str(md)]) == 2
    assert "gpu/notes.json: not a benchmark result" in capsys.readouterr().err


def test_print_mode_shows_each_file_once(root, capsys):
    assert main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("### ") == 2 and "### gpu/2026-11-20-h200" in out


def test_sca_rows_add_the_flop_model_columns():
    row = {"preset": "var-d16", "method": "sca:window+default", "engine": "eager", "noise": "per_sample",
           "batch_size": 4, "images_per_s": 0.2, "speedup_vs_vanilla": 0.98, "ideal_speedup": 1.0312,
           "attention_pairs_kept": 0.5123, "kv_tokens_kept_at_last_scale": 0.8, "kv_allocated_ratio": 0.75}
    assert "ideal (FLOP model)" not in render(DOC)
    lines = render(dict(DOC, rows=DOC["rows"][:2] + [row])).splitlines()
    assert lines[2].endswith("| ideal (FLOP model) | attention pairs kept | KV kept at last scale | KV allocated |")
    assert lines[-1].endswith("| 0.98× | - | - | 1.031× | 0.512 | 0.800 | 0.750 |")
    assert lines[-2].endswith("| - | - | - | - |")  # rows of other methods leave them empty


def test_the_gpu_suites_sca_section_is_a_second_table():
    sca = {"preset": "var-d16", "method": "sca:window+default", "engine": "graphs", "noise": "per_sample",
           "batch_size": 32, "images_per_s": 300.0, "speedup_vs_vanilla": 1.02, "ideal_speedup": 1.031,
           "attention_pairs_kept": 0.5, "kv_tokens_kept_at_last_scale": 0.75, "kv_allocated_ratio": 0.718}
    doc = dict(DOC, sections={"sca": {"rows": [sca], "failures": {"var-d24": "RuntimeError: no kernel"}}})
    text = render(doc)
    main_table, rest = text.split("SCA-Mask section:")
    assert "ideal (FLOP model)" not in main_table and "| var-d16 | vanilla | eager |" in main_table
    assert "| var-d16 | sca:window+default | graphs |" in rest and rest.count("ideal (FLOP model)") == 1
    assert text.endswith("SCA-Mask section, var-d24: failed: RuntimeError: no kernel")


def test_the_gpu_suites_train_section_is_a_third_table_or_its_reason():
    common = {"preset": "var-d16", "batch_size": 16, "device": "cuda", "precision": "bf16-mixed"}
    rows = [{"name": "lightning_vs_bare", **common, "bare_samples_per_s": 120.0, "lightning_samples_per_s": 118.5,
             "ratio": 1.0127, "target": ">= 0.95"},
            {"name": "data_vs_step", **common, "data_ms_per_batch": 4.31, "step_ms": 130.0, "ratio": 0.0327,
             "source": "temporary cache"},
            {"name": "memory_train_vs_sampling", **common, "train_step_mib": 3000.0, "var_sampling_mib": 12000.0,
             "ratio": 0.25, "target": "<= 0.5", "method": "torch.cuda.max_memory_allocated"}]
    lines = render(dict(DOC, sections={"train": {"rows": rows}})).split("Training section:")[1].strip().splitlines()
    assert lines[0] == "| benchmark | preset | batch | precision | ratio | target | measured |"
    assert lines[2] == ("| lightning_vs_bare | var-d16 | 16 | bf16-mixed | 1.013 | >= 0.95 | "
                        "bare 120.0 samples/s, Lightning 118.5 samples/s |")
    assert lines[3] == ("| data_vs_step | var-d16 | 16 | bf16-mixed | 0.033 | - | "
                        "load 4.3 ms/batch vs step 130.0 ms (temporary cache) |")
    assert lines[4].startswith("| memory_train_vs_sampling | var-d16 | 16 | bf16-mixed | 0.250 | <= 0.5 | "
                               "train step 3000 MiB vs VAR sampling 12000 MiB")
    skipped = render(dict(DOC, sections={"train": {"skipped": "needs zarr"}}))
    assert skipped.endswith("Training section: skipped (needs zarr)")
    assert "Training section" not in render(DOC)


def test_the_docs_tables_match_the_committed_result_files():
    """docs/benchmarks.md's and the README's generated blocks are what the committed files under benchmarks/ give."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for doc in (repo / "docs" / "benchmarks.md", repo / "README.md"):
        assert main(["--root", str(repo / "benchmarks"), "--write", str(doc), "--check"]) == 0, doc


def test_a_tradeoff_result_is_no_speed_table(root, tmp_path, capsys):
    """radar-bench tradeoff's tradeoff.json has rows with images_per_s but a setting, no method: not a speed
    table (skipped, no `latest` alias; a block naming it is refused)."""
    (root / "tradeoff").mkdir()
    doc = {"date": "2026-12-01T00:00:00Z", "quality_metric": "psnr_vs_vanilla",
           "rows": [{"setting": "vanilla", "images_per_s": 3.0, "speedup": 1.0}]}
    (root / "tradeoff" / "tradeoff.json").write_text(json.dumps(doc))
    docs = load_results(root)
    assert docs["tradeoff/tradeoff"] is None and "tradeoff/latest" not in docs
    md = tmp_path / "README.md"
    md.write_text("<!-- table:tradeoff/tradeoff -->\n<!-- /table:tradeoff/tradeoff -->\n")
    assert main(["--root", str(root), "--write", str(md)]) == 2
    assert "tradeoff/tradeoff.json: not a benchmark result" in capsys.readouterr().err


def test_a_failed_section_and_an_unfinished_suite_are_said():
    suite = dict(DOC, suite={"sections": ["accel", "train"]}, status={"accel": "ok (200 s)",
                                                                      "train": "failed: OutOfMemoryError: CUDA"})
    text = render(suite)
    assert "incomplete: the suite did not finish" in text.splitlines()[0]  # no wall_s: killed before the end
    assert text.endswith("train section: failed: OutOfMemoryError: CUDA") and "accel section" not in text
    finished = render(dict(suite, wall_s=420.0))
    assert "incomplete" not in finished and "incomplete" not in render(DOC)  # (not a suite's file)


def test_the_provenance_line_says_how_many_rounds_each_number_rests_on():
    """The GPU suite cuts the timed rounds to its budget (d20 / d30 may have one): the table says so."""
    def head(reps: list, warmup: int = 1) -> str:
        rows = [dict(DOC["rows"][1], repeats=n, warmup=warmup) for n in reps]
        return render(dict(DOC, rows=rows)).splitlines()[0]

    assert head([3, 5, 3]).endswith("` · 1 warm-up and 3–5 timed rounds per row (medians)")
    assert head([1], warmup=0).endswith("` · 0 warm-up and 1 timed round per row")
    assert render(DOC).splitlines()[0].endswith("--official_var .official_var`")  # rows that do not say: nothing


def _row(preset, method, engine, **kw):
    return {"preset": preset, "method": method, "engine": engine, "noise": kw.pop("noise", "per_sample"),
            "batch_size": 32, "images_per_s": 1.0, **kw}


def test_the_targets_view_marks_the_default_engine_of_the_target_presets():
    """`NAME#targets`: the graphs engine's numbers where the file has them, ✓ / ✗ against each bound on
    var-d16 / var-d24 only, the worst pair, the decode to three digits."""
    from radar_train.bench.tables import render_targets

    rows = []
    for preset, fast in (("var-d16", 1.30), ("var-d24", 1.20), ("var-d30", 1.10)):
        rows += [_row(preset, "vanilla", "eager", vs_official=1.1, vs_official_e2e=1.05),
                 _row(preset, "vanilla", "eager", noise="official", vs_official=9.0),
                 _row(preset, "vanilla", "graphs", vs_official=1.5, vs_official_e2e=1.25),
                 _row(preset, "vanilla", "graphs", noise="official", vs_official=0.1),  # (not the default noise)
                 _row(preset, "fastvar:default", "eager", speedup_vs_vanilla=9.0),
                 _row(preset, "fastvar:default", "graphs", speedup_vs_vanilla=fast),
                 _row(preset, "stagevar:default", "graphs", speedup_vs_vanilla=1.9),
                 _row(preset, "pair:fastvar:default", "graphs", pair_vs_separate=0.70),
                 _row(preset, "pair:stagevar:paper", "graphs", pair_vs_separate=0.81),
                 _row(preset, "decode", "eager", noise=None, vs_official=0.995)]
    def table(rows):
        text = render_targets(dict(DOC, rows=rows))
        return {line.split(" | ")[0].lstrip("| "): [c.rstrip(" |") for c in line.split(" | ")[2:]]
                for line in text.splitlines() if line.startswith("| ")}

    t = table(rows)
    assert t["our vanilla vs the official sampler, loop"] == ["1.50× ✓", "1.50× ✓", "1.50×"]
    assert t["FastVAR default vs our vanilla"] == ["1.30× ✓", "1.20× ✗", "1.10×"]
    assert t["StageVAR default vs our vanilla"][:2] == ["1.90× ✓", "1.90× ✓"]
    assert t["forked pair vs the two runs separately (the worst pair)"][:2] == ["0.810 ✗", "0.810 ✗"]
    assert t["our VQ-VAE decode vs the official"][:2] == ["0.995× ✗", "0.995× ✗"]
    # a preset measured with eager only is said so; a target preset with no rows is not measured, a skipped
    # pair leaves the worst pair unknown
    rows = [r for r in rows if not (r["preset"] == "var-d24" and r["engine"] == "graphs")]
    rows = [r for r in rows if r["preset"] != "var-d16"] + [_row("var-d30", "pair:stagevar:default", "graphs",
                                                               skipped="OutOfMemoryError")]
    t = table(rows)
    assert t["FastVAR default vs our vanilla"] == ["not measured ✗", "9.00× (eager) ✓", "1.10×"]
    assert t["forked pair vs the two runs separately (the worst pair)"] == ["not measured ✗", "not measured ✗", "skipped"]
    with pytest.raises(ValueError, match="no sampling rows"):
        render_targets(dict(DOC, rows=[]))


def test_latest_skips_a_file_without_rows_and_the_targets_view_of_one_is_an_error(root, tmp_path, capsys):
    """A newer file of other sections only (e.g. a profile run) does not become `latest`; named, its targets
    view is one error line naming the table, and the markdown is left as it was."""
    (root / "gpu" / "2026-12-05-profile.json").write_text(json.dumps(dict(DOC, date="2026-12-05T00:00:00Z", rows=[])))
    docs = load_results(root)
    assert docs["gpu/latest"]["date"] == DOC["date"]
    md = tmp_path / "r.md"
    md.write_text("<!-- table:gpu/2026-12-05-profile#targets -->\n<!-- /table:gpu/2026-12-05-profile#targets -->\n")
    before = md.read_bytes()
    assert main(["--root", str(root), "--write", str(md)]) == 2
    err = capsys.readouterr().err
    assert "table gpu/2026-12-05-profile#targets: no sampling rows" in err and err.count("\n") == 1
    assert md.read_bytes() == before


def test_a_view_block_is_filled_and_an_unknown_view_is_one_error(root, tmp_path, capsys):
    md = tmp_path / "r.md"
    md.write_text("a\n<!-- table:gpu/latest#targets -->\nold\n<!-- /table:gpu/latest#targets -->\nb\n")
    assert main(["--root", str(root), "--write", str(md)]) == 0
    text = md.read_text()
    assert "| target | bound | var-d16 |" in text and "old" not in text and text.startswith("a\n") and text.endswith("b\n")
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- table:gpu/latest#nope -->\n<!-- /table:gpu/latest#nope -->\n")
    before = bad.read_bytes()
    assert main(["--root", str(root), "--write", str(bad)]) == 2
    assert "table gpu/latest#nope: no such view" in capsys.readouterr().err and bad.read_bytes() == before


def test_a_training_result_is_a_table_of_its_rows_and_never_the_latest(root, tmp_path, capsys):
    """A `radar-bench train --json` file: its rows as the training table (the GPU suite's training section's),
    named by its path only: `latest` stays the newest sampling result."""
    train = {"device": "cpu", "torch": "2.13.0+cpu", "cuda": None, "commit": "def5678", "date": "2027-01-01T00:00:00Z",
             "command": "radar-bench train --args.preset var-d16", "rows": [
                 {"name": "checkpointing", "preset": "var-d16", "batch_size": 4, "device": "cpu",
                  "precision": "32-true", "micro_batch_size": 1, "activation_checkpointing": "blocks",
                  "train_step_mib": 1365.0, "step_ms": 28699.2, "ratio": 0.222, "time_ratio": 0.82, "steps": 1,
                  "method": "peak RSS", "vs_sampling": 0.482}]}
    (root / "gpu" / "2027-01-01-train.json").write_text(json.dumps(train))
    docs = load_results(root)
    assert docs["gpu/latest"]["commit"] == "abc1234" and docs["gpu/2027-01-01-train"] == train
    lines = render(train).splitlines()
    assert lines[0].startswith("2027-01-01T00:00:00Z · cpu · torch 2.13.0+cpu · commit `def5678`")
    assert lines[2] == "| benchmark | preset | batch | precision | ratio | target | measured |"
    assert lines[4].startswith("| checkpointing | var-d16 | 4 | 32-true | 0.222 | - | micro-batches of 1, "
                               "activation_checkpointing blocks: train step 1365 MiB, 0.482x VAR sampling of the batch")
    md = tmp_path / "t.md"
    text = "<!-- table:gpu/2027-01-01-train#targets -->\n<!-- /table:gpu/2027-01-01-train#targets -->\n"
    md.write_text(text)
    assert main(["--root", str(root), "--write", str(md)]) == 2 and md.read_text() == text
    assert capsys.readouterr().err.strip().endswith("table gpu/2027-01-01-train#targets: a training result "
                                                    "(radar-bench train): the targets view needs the accel rows")


def test_write_keeps_a_crlf_files_other_bytes_and_its_line_ends(root, tmp_path):
    """--write replaces what lies between the markers and nothing else: reading with universal newlines turned every
    CRLF of the file into LF."""
    md = tmp_path / "README.md"
    text = "# Title\r\n\r\n<!-- table:gpu/latest -->\r\nold table\r\n<!-- /table:gpu/latest -->\r\n\r\nafter\r\n"
    md.write_bytes(text.encode())
    assert main(["--root", str(root), "--write", str(md)]) == 0
    table = render(DOC).replace("\n", "\r\n") + "\r\n"
    assert md.read_bytes() == text.replace("old table\r\n", table).encode()
    assert main(["--root", str(root), "--write", str(md), "--check"]) == 0


def test_a_markdown_file_that_is_not_utf8_is_one_line_naming_it(root, tmp_path, capsys):
    md = tmp_path / "notes.md"
    md.write_bytes(b"caf\xe9\n<!-- table:gpu/latest -->\n<!-- /table:gpu/latest -->\n")
    assert main(["--root", str(root), "--write", str(md)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --write {md}: not UTF-8 text"), err
    assert md.read_bytes().startswith(b"caf\xe9")


@pytest.mark.parametrize("doc", [
    {"rows": [{"method": "vanilla", "images_per_s": "fast", "preset": "tiny"}]},
    {"rows": [{"name": "lightning_vs_bare", "ratio": None}]},
    {"rows": [{"method": "vanilla", "images_per_s": 1.0, "preset": "tiny"}],
     "sections": {"profile": {"scales": [{"preset": "p"}]}}},
], ids=["text-for-a-number", "no-ratio", "profile-without-patch-nums"])
def test_a_result_file_with_a_field_of_the_wrong_kind_is_one_line_naming_it(tmp_path, capsys, doc):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.json").write_text(json.dumps(doc))
    md = tmp_path / "README.md"
    md.write_text("<!-- table:x/a -->\n<!-- /table:x/a -->\n")
    for argv in (["--root", str(tmp_path)], ["--root", str(tmp_path), "--write", str(md)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "x/a.json" in err[0], err
