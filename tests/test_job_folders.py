"""Job folders and search state against hostile contents, with generated cases (issue 40): a job
writes only into a folder it owns; a damaged search state or log is one clear line."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lopt import jobdir
from lopt.cli import main
from lopt.config import ConfigError

NAMES = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = sorted(jobdir.JOB_FILES)


@SETTINGS
@given(kind=st.sampled_from(KINDS), name=NAMES, content=st.binary(max_size=32))
def test_a_folder_holding_a_users_file_is_refused_and_kept(tmp_path_factory, kind, name, content):
    folder = tmp_path_factory.mktemp("job")
    if name in jobdir.JOB_FILES[kind] or name == jobdir.MARKER:
        name += ".mine"
    (folder / name).write_bytes(content)
    with pytest.raises(ConfigError, match="did not write"):
        jobdir.claim(folder, kind)
    assert (folder / name).read_bytes() == content
    assert not (folder / jobdir.MARKER).exists()


@SETTINGS
@given(owner=st.sampled_from(KINDS), other=st.sampled_from(KINDS))
def test_a_folder_of_another_job_kind_is_refused(tmp_path_factory, owner, other):
    folder = tmp_path_factory.mktemp("job")
    jobdir.claim(folder, owner)
    (folder / "config.json").write_text("{}")
    if owner == other:
        assert jobdir.claim(folder, other) == folder
    else:
        with pytest.raises(ConfigError, match=f"a {owner} job's folder"):
            jobdir.claim(folder, other)
        assert (folder / "config.json").read_text() == "{}"


@SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    names=st.sets(st.sampled_from(sorted(set().union(*jobdir.JOB_FILES.values()))), max_size=4),
)
def test_a_folder_of_the_jobs_own_files_from_before_markers_is_taken(tmp_path_factory, kind, names):
    folder = tmp_path_factory.mktemp("job")
    for name in names:
        (folder / name).write_text("x")
    if names <= jobdir.JOB_FILES[kind]:
        jobdir.claim(folder, kind)
        assert json.loads((folder / jobdir.MARKER).read_text()) == {"job": kind}
    else:
        with pytest.raises(ConfigError):
            jobdir.claim(folder, kind)


def test_links_and_files_in_the_way_are_one_line(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="symbolic link"):
        jobdir.claim(tmp_path / "link", "search")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot use"):
        jobdir.claim(tmp_path / "file" / "below", "eval")


def test_search_into_a_meta_train_folder_spares_its_config(tmp_path, capsys):
    run = tmp_path / "run"
    jobdir.claim(run, "meta-train")
    (run / "config.json").write_text('{"mine": true}')
    code = main(
        ["search", "configs/search/quickstart.toml", "--quiet", "--set", f"run.output_dir={json.dumps(str(run))}"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta-train job's folder" in err[0]
    assert (run / "config.json").read_text() == '{"mine": true}'


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
            st.dictionaries(NAMES, st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4).map(
                json.dumps
            ),
            st.just('{"fitness": "x", "structural": 1, "id": "a", "text": 3, "generation": 0, "mutation": null}'),
        ),
        max_size=6,
    )
)
def test_search_top_on_a_garbage_log_is_one_line(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("search")
    (folder / "log.jsonl").write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["search", "top", str(folder)])
    assert code in (0, 2)
    assert len(err.getvalue().strip().splitlines()) <= 1
    assert "Traceback" not in err.getvalue()


def test_damaged_or_missing_search_state_is_one_line(tmp_path, capsys):
    """A search folder as a killed search leaves it (its config written, no state yet), then with
    damaged states: resuming says why in one line, before any compile."""
    import dataclasses

    from lopt.config import load_config
    from lopt.meta_train.search.config import SearchConfig

    run = tmp_path / "se"
    config = load_config(SearchConfig, "configs/search/quickstart.toml", [f"run.output_dir={json.dumps(str(run))}"])
    jobdir.claim(run, "search")
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    (run / "log.jsonl").write_text("")
    assert main(["search", "--resume", str(run), "--quiet"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert (
        main(["search", "configs/search/quickstart.toml", "--quiet", "--set", f"run.output_dir={json.dumps(str(run))}"])
        == 2
    )
    assert "start afresh" in capsys.readouterr().err
    for state in ["", "[]", '{"generation": 1}', "\u0000\u00ff", '{"generation": "x", "next_id": []}']:
        (run / "state.json").write_bytes(state.encode("utf-8", "surrogatepass"))
        assert main(["search", "--resume", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "damaged" in err[0], (state, err)


JOB_CONFIGS = {
    "meta-train": ("configs/meta_train/quickstart.toml", "run.output_dir"),
    "eval": ("configs/eval/quickstart.toml", "output_dir"),
    "search": ("configs/search/quickstart.toml", "run.output_dir"),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(JOB_CONFIGS)), below=st.lists(NAMES, min_size=1, max_size=3))
def test_an_output_folder_below_a_file_is_one_line(tmp_path_factory, capsys, kind, below):
    """File-system errors (here: a regular file where a folder must be) end in one line."""
    tmp = tmp_path_factory.mktemp("fs")
    (tmp / "afile").write_text("x")
    target = tmp.joinpath("afile", *below)
    config, key = JOB_CONFIGS[kind]
    code = main([kind, config, "--quiet", "--set", f"{key}={json.dumps(str(target))}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert (tmp / "afile").read_text() == "x"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    state=st.dictionaries(
        st.sampled_from(
            [
                "generation",
                "next_id",
                "seed_fitness",
                "best",
                "population",
                "counters",
                "since_improvement",
                "restarts",
                "junk",
            ]
        ),
        st.one_of(
            st.integers(),
            st.none(),
            st.text(max_size=4),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(NAMES, st.integers(), max_size=2),
        ),
        max_size=9,
    )
)
def test_generated_damaged_search_states_are_one_line(tmp_path_factory, capsys, state):
    import dataclasses

    from lopt.config import load_config
    from lopt.meta_train.search.config import SearchConfig

    run = tmp_path_factory.mktemp("se")
    config = load_config(SearchConfig, "configs/search/quickstart.toml", [f"run.output_dir={json.dumps(str(run))}"])
    jobdir.claim(run, "search")
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    for name in ("log.jsonl", "cache.jsonl", "validation.jsonl"):
        (run / name).write_text("")
    (run / "state.json").write_text(json.dumps(state))
    code = main(["search", "--resume", str(run), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "damaged" in err[0], (state, err)
