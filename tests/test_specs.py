"""core.specs: the one place spec strings and setting labels are written and read."""

import pytest

from core.controllers import parse_spec
from core.errors import ControllerSpecError
from core.specs import beta_label, cmc_spec, format_spec, parse_options, split_spec


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 1.0, 1, 0.125])
def test_beta_labels_read_as_the_service_and_the_tui_wrote_them(beta):
    assert beta_label(beta) == f"beta={beta:g}" and cmc_spec(beta) == f"cmc:beta={format(float(beta), 'g')}"


def test_specs_round_trip_through_parse_and_format():
    for text in ("cmc:beta=0.5", "sc:n=64", "asc", "cmc:beta=0.7,max_branches=6,max_rounds=9", "x.py:beta=0.5"):
        (spec,) = parse_spec(text)
        assert str(spec) == text == format_spec(spec.name, spec.args)
    assert split_spec(" cmc:beta=0.5 ") == ("cmc", "beta=0.5") and split_spec("asc") == ("asc", "")


def test_options_keep_value_lists_and_quote_the_spec_in_errors():
    assert parse_options("beta=0,0.5,1,n=3") == {"beta": ["0", "0.5", "1"], "n": ["3"]}
    with pytest.raises(ControllerSpecError, match="'cmc:beta=1,beta=2': option 'beta' given twice"):
        parse_options("beta=1,beta=2", "cmc:beta=1,beta=2")
