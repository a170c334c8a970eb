import os

# Tests train small models on shared CI cores: idle OpenMP threads should sleep, not spin
# (see nvp_rt.command.passive_openmp_waits). Set before torch or the kernels load OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import secrets  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nvp_rt  # noqa: E402
from dist_info import write_distribution  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if nvp_rt.cuda_is_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (or nvp built without CUDA kernels)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A generator with a fresh seed per test, reported when the test fails."""
    seed = secrets.randbits(32)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeds = [v for k, v in item.user_properties if k == "seed"]
    if report.failed and seeds:
        report.sections.append(("random seed", f"rng seed = {seeds[0]} (np.random.default_rng)"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Adapter training is many small ops: on a shared 2-core machine a second thread spins more than it helps."""
    import torch  # here, not at the top: the runtime's tests must not find torch imported

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def model_store(tmp_path_factory):
    """Graphs the tests export go to a throwaway store, never the user's ~/.cache/nvp (subprocesses inherit it).

    One store for the whole run, shared by pytest-xdist's workers too: graphs are keyed by architecture and
    weights (presets without a checkpoint have seeded weights), so each is exported once per run. Exports are
    most of the suite's time; the store's writes are atomic, so workers may race to write the same graph.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "model_store"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("model_store")
    os.environ["NVP_STORE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_store(model_store):
    """The run's model store (see ``model_store``), for tests that export graphs themselves."""
    from nvp_rt.store import ModelStore

    return ModelStore(model_store)


@pytest.fixture(autouse=True, scope="session")
def tree_metadata(tmp_path_factory):
    """This tree's entry points (pyproject.toml), ahead of whatever nvp is installed.

    The tests run this tree's code, which may not be the installed checkout (PYTHONPATH over an
    editable install of another one): `nvp encode` would then find the installed metadata's
    ``nvp.commands``, not this tree's. importlib.metadata takes the first distribution of a name
    on sys.path, so this one wins, here and in subprocesses (PYTHONPATH).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    write_distribution(site, project["name"], project["version"], project["entry-points"])
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return site
