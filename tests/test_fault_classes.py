"""One fault-class vocabulary (`harness.diagnosis.classes.FaultClass`): the diagnosis' ids and
labels, the catalogue's class strings and the bridge between them all come from it."""
import json

import pytest

from harness.diagnosis import CLASSES
from harness.diagnosis.classes import CATALOGUE_CLASSES, FaultClass
from harness.diagnosis.layer import HYPOTHESES as LAYER_HYPOTHESES
from harness.diagnosis.op import HYPOTHESES as OP_HYPOTHESES
from harness.faults import catalogue
from harness.faults.catalogue import FAULTS, GRAPH_FAULTS, Fault
from harness.faults.heldout import HELDOUT_FAULTS


def test_classes_are_plain_strings_in_json():
    c = FaultClass.PROJECTION_LAYOUT_BA
    assert c == "projection_layout_ba" and f"{c}" == "projection_layout_ba"
    assert json.dumps({"class": c}) == '{"class": "projection_layout_ba"}'
    assert CLASSES["projection_layout_core"] == "projection layout: core (q, k, v, b, a)"


def test_every_catalogue_fault_names_a_known_class():
    for f in (*FAULTS.values(), *GRAPH_FAULTS.values(), *HELDOUT_FAULTS.values()):
        assert isinstance(f.fault_class, FaultClass), f.name
        assert f.fault_class.zoo == f.diagnosis_class, f.name    # reports keep the catalogue's string


def test_bridge_is_derived_from_the_enum():
    for f in FAULTS.values():
        want = CATALOGUE_CLASSES.get(f.diagnosis_class)
        assert want == (f.fault_class.value if f.fault_class.diagnosable else None), f.name
    assert set(CATALOGUE_CLASSES.values()) == set(CLASSES)


def test_hypotheses_use_the_enum():
    for h in (*OP_HYPOTHESES, *LAYER_HYPOTHESES):
        assert isinstance(h.cls, FaultClass) and h.cls.diagnosable, h.name


def test_unknown_catalogue_string_fails_at_declaration():
    good = next(iter(catalogue._INCIDENTS))
    with pytest.raises(ValueError, match="unknown fault class 'projection layout: bogus'"):
        catalogue._build([(*good[:4], "projection layout: bogus")])
    with pytest.raises(ValueError, match="unknown fault class"):
        Fault(name="x", base="triton", incident="i", diagnosis_class="no such class", make=object)


def test_unknown_hypothesis_class_fails():
    from harness.diagnosis.core import Hypothesis
    with pytest.raises(ValueError):
        Hypothesis("x", "no_such_class", "words", lambda c: None)
    with pytest.raises(ValueError, match="no class a diagnosis names"):
        Hypothesis("x", "held_out", "words", lambda c: None)
