import pytest

from tfembsize.plan import SizePlan
from tfembsize.protocol import (
    MethodOutput,
    available_methods,
    get_method,
    paper_cell,
    register_method,
    unregister_method,
)


def test_builtin_methods_are_registered():
    names = available_methods()
    for name in ("full", "es", "mr", "frequency", "bet", "bet-random", "bet-sizes-only"):
        assert name in names
    assert get_method("full").budgeted is False
    assert get_method("es").budgeted is True


def test_register_as_decorator_and_function():
    try:

        @register_method("my-method", description="test")
        def mine(ctx):
            return MethodOutput()

        assert get_method("my-method").fn is mine
        assert get_method("my-method").description == "test"
        register_method("my-method", mine)  # same function again: fine
        with pytest.raises(ValueError, match="A method named 'my-method' is already registered"):
            register_method("my-method", lambda ctx: None)
        register_method("my-method", lambda ctx: None, budgeted=False, overwrite=True)
        assert get_method("my-method").budgeted is False
    finally:
        unregister_method("my-method")
    with pytest.raises(
        KeyError, match=r"Unknown method 'my-method'\. Registered methods: .*\bes, "
    ):
        get_method("my-method")


def test_bad_names_and_outputs():
    with pytest.raises(ValueError, match="`name` must be lower case"):
        register_method("Bad Name", lambda ctx: None)
    with pytest.raises(TypeError, match="`fn` must be callable"):
        register_method("fine", 3)
    with pytest.raises(ValueError, match="Give a `plan` or a `build_model`, not both"):
        MethodOutput(plan=SizePlan({"a": [1]}), build_model=lambda: None)
    with pytest.raises(TypeError, match="`plan` must be a SizePlan"):
        MethodOutput(plan={"a": [1]})


def test_paper_cells():
    es = paper_cell("ml-1m", "lightgcn", "es", 0.9)
    assert (es.recall20, es.ndcg20) == (0.2105, 0.3787)
    assert es.text() == ".2105 / .3787 (LightGCN)"
    mf = paper_cell("ml-1m", "mf", "mr", 0.95)
    assert (mf.recall20, mf.backbone) == (0.1634, "lightgcn")
    assert "paper has no MF column" in mf.text()
    assert paper_cell("gowalla", "ncf", "bet", 0.95).recall20 == 0.0963
    assert paper_cell("gowalla", "ngcf", "bet", 0.95).ndcg20 == 0.0998  # the paper's typo fixed
    assert paper_cell("gowalla", "lightgcn", "es", 0.8).recall20 == 0.1674
    none = paper_cell("gowalla", "mf", "full", None)
    assert not none.available and none.text() == "— (paper has no full-size (d=128) row)"
    assert paper_cell("ml-100k", "mf", "es", 0.9).note == "no paper reports ml-100k"
    assert paper_cell("ml-1m", "lightgcn", "bet", 0.9).note == "paper has no bet cell at 90%"
    esapn = paper_cell("gowalla", "lightgcn", "esapn", None)
    assert esapn.recall20 == 0.1579 and "reached sparsity 75%" in esapn.note


@pytest.mark.parametrize(
    "name",
    [
        "tfembsize.protocol.paper",
        "tfembsize.protocol.methods.bet",
        "tfembsize.protocol.settings",
        "tfembsize.protocol.report",
        "tfembsize.protocol.plan_stats",
        "tfembsize.records.feedback",
        "tfembsize.search.selection",
    ],
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
