"""Nightscout sites (monitor.intake.sites): the api-secret check and the sites file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.intake.sites import Site, load_sites, secret_hash

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
SITES_DOC = st.fixed_dictionaries({"sites": st.dictionaries(st.text(max_size=10), JSON, max_size=3)}) | JSON


def test_the_site_admits_the_sha1_of_its_secret_in_any_case_and_nothing_else() -> None:
    site = Site("s", "P1", secret_hash("a-long-site-secret"))
    sha1 = hashlib.sha1(b"a-long-site-secret").hexdigest()
    assert site.admits(sha1) and site.admits(sha1.upper()) and site.admits(f" {sha1} ")
    assert not site.admits("a-long-site-secret")  # the secret itself is not the credential
    assert not site.admits(hashlib.sha1(b"another-secret").hexdigest())
    assert not site.admits("") and not site.admits(None)


@settings(max_examples=300, deadline=None)
@given(SITES_DOC)
def test_a_sites_file_of_any_json_loads_or_is_refused_with_value_error(tmp_path_factory, doc) -> None:
    path: Path = tmp_path_factory.mktemp("sites") / "sites.json"
    path.write_text(json.dumps(doc))
    try:
        sites = load_sites(path)
    except ValueError:
        return
    assert all(isinstance(s, Site) for s in sites.values())


def test_a_good_file_and_bad_entries() -> None:
    good = {"sites": {"home-1": {"patient_id": "P1", "api_secret_sha256": secret_hash("x" * 12)}}}
    assert load_sites(None) == {}
    for bad in ({"sites": {"../x": good["sites"]["home-1"]}},
                {"sites": {"home-1": {"patient_id": "P1", "api_secret_sha256": "not-hex"}}},
                {"sites": {"home-1": {"patient_id": "P1"}}}):
        with pytest.raises(ValueError):
            load_sites_from(bad)
    assert load_sites_from(good)["home-1"].patient_id == "P1"


def load_sites_from(doc: dict, tmp: Path = Path("/tmp")) -> dict[str, Site]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=tmp, delete=False) as fh:
        json.dump(doc, fh)
    return load_sites(Path(fh.name))
