"""HL7 FHIR R4 ``Observation`` and ``Bundle`` -> canonical readings.

Recognised vital signs, by LOINC (``http://loinc.org``) and/or IEEE 11073 MDC
(``urn:iso:std:iso:11073:10101``, as sent by Personal Health Device gateways, which may carry MDC only,
e.g. glucose 160368): see :data:`LOINC_KINDS` and :data:`MDC_KINDS`. A blood-pressure panel (LOINC
85354-9 / MDC 150020) takes its values from ``component`` (systolic 8480-6 / 150021, diastolic
8462-4 / 150022); every other kind from ``valueQuantity`` (UCUM ``code``, falling back to the ``unit``
display text). Values are converted to the canonical unit (:mod:`monitor.contract.units`).

Mapping: ``Observation.id`` -> ``reading_id`` (else its first ``identifier`` value without
``urn:uuid:``; ``None`` if neither); ``subject.reference``
``Patient/xyz`` -> ``patient_id`` ``xyz`` (``urn:uuid:`` references are resolved within a Bundle; the
``patient_id`` parameter is the fallback); ``device.reference`` -> ``device_id``; the
``observation-gatewayDevice`` extension -> ``gateway_id``; ``effectiveDateTime``,
``effectiveInstant`` or ``effectivePeriod.start`` -> ``measured_at`` (UTC; naive -> ``naive_timestamp``).
``status`` ``entered-in-error`` or ``cancelled`` -> ``withdrawn_status``.

Each Observation gives exactly one :class:`CanonicalReading` or :class:`Rejection`; a Bundle gives one
per Observation entry (other resources such as Patient or Device are not readings and give nothing).
Never raises on bad input, never logs payloads.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from monitor.contract.units import CANONICAL_UNIT, to_canonical
from monitor.intake.canonical import (
    CanonicalReading,
    as_number,
    check_identifier,
    load_json,
    parse_timestamp,
    validate,
)
from monitor.intake.native import Rejection

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"

LOINC_KINDS: dict[str, str] = {
    "85354-9": "blood_pressure",  # Blood pressure panel with all children optional
    "55284-4": "blood_pressure",  # Blood pressure systolic and diastolic (older panel)
    "8867-4": "heart_rate",
    "2708-6": "spo2",
    "59408-5": "spo2",  # by pulse oximetry
    "9279-1": "respiratory_rate",
    "8310-5": "body_temperature",
    "8331-1": "body_temperature",  # oral
    "29463-7": "body_weight",
    "3141-9": "body_weight",  # measured
    "2339-0": "glucose",  # blood, mass/volume
    "15074-8": "glucose",  # blood, moles/volume
    "41653-7": "glucose",  # capillary blood by glucometer, mass/volume
    "14743-9": "glucose",  # capillary blood by glucometer, moles/volume
    "14745-4": "glucose",  # body fluid, moles/volume (CGM uploads, e.g. every reading of a Sensotrend batch)
    "99504-3": "glucose",  # interstitial fluid (CGM), mass/volume
    "105272-9": "glucose",  # interstitial fluid (CGM), moles/volume
}
"""LOINC code -> reading kind."""

MDC_KINDS: dict[str, str] = {
    "150020": "blood_pressure",  # MDC_PRESS_BLD_NONINV
    "149530": "heart_rate",  # MDC_PULS_RATE
    "147842": "heart_rate",  # MDC_ECG_HEART_RATE
    "150456": "spo2",  # MDC_PULS_OXIM_SAT_O2
    "151562": "respiratory_rate",  # MDC_RESP_RATE
    "150364": "body_temperature",  # MDC_TEMP_BODY
    "188736": "body_weight",  # MDC_MASS_BODY_ACTUAL
    "160184": "glucose",  # MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD (IEEE 11073-10417 glucometers)
    "160368": "glucose",  # MDC_CONC_GLU_UNDETERMINED_PLASMA (the PHD IG's glucose example)
}
"""IEEE 11073 MDC code -> reading kind (the PHD IG's MDC-to-LOINC map, reduced to kinds)."""

SYSTOLIC_CODES = frozenset({(LOINC, "8480-6"), (MDC, "150021")})
DIASTOLIC_CODES = frozenset({(LOINC, "8462-4"), (MDC, "150022")})

_BOUNDED = {"<": "low", "<=": "low", ">": "high", ">=": "high"}
"""Quantity.comparator -> the side a reading is bounded on (its value is the device's limit)."""

_UNIT_ALIASES: dict[str, dict[str, str]] = {
    # Lower-cased spelling -> contract UCUM code, per kind. UCUM codes themselves are included;
    # the rest are display texts seen in the field ("beats/minute" in the FHIR spec examples).
    # "MG/DL" is UCUM's case-insensitive form; "MGDL" what Android health platforms upload
    "glucose": {"mmol/l": "mmol/L", "mg/dl": "mg/dL", "mgdl": "mg/dL"},
    "blood_pressure": {"mm[hg]": "mm[Hg]", "mmhg": "mm[Hg]", "mm hg": "mm[Hg]"},
    "heart_rate": {
        "/min": "/min",
        "{beats}/min": "/min",
        "{beat}/min": "/min",
        "beats/minute": "/min",
        "beats/min": "/min",
        "bpm": "/min",
        "1/min": "/min",
    },
    "respiratory_rate": {
        "/min": "/min",
        "{breaths}/min": "/min",
        "{breath}/min": "/min",
        "breaths/minute": "/min",
        "breaths/min": "/min",
        "1/min": "/min",
    },
    "spo2": {"%": "%", "%{saturation}": "%", "percent": "%"},
    "body_temperature": {
        "cel": "Cel",
        "°c": "Cel",
        "c": "Cel",
        "[degf]": "[degF]",
        "°f": "[degF]",
        "f": "[degF]",
    },
    "body_weight": {"kg": "kg", "g": "g", "[lb_av]": "[lb_av]", "lb": "[lb_av]", "lbs": "[lb_av]"},
}


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _codings(concept: Any) -> list[tuple[str, str]]:
    out = []
    for coding in _list(_dict(concept).get("coding")):
        coding = _dict(coding)
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            out.append((system.strip(), code.strip()))
    return out


def _kind_of(concept: Any) -> tuple[str, str] | Rejection:
    """(kind, "system|code") of an Observation.code, LOINC preferred for the original code."""
    found: list[tuple[str, str]] = []
    for system, code in _codings(concept):
        table = LOINC_KINDS if system == LOINC else MDC_KINDS if system == MDC else {}
        if code in table:
            found.append((table[code], f"{system}|{code}"))
    if not found:
        codes = ", ".join(f"{s}|{c}" for s, c in _codings(concept)[:4]) or "no coding"
        return Rejection("unsupported_code", f"code: not a supported vital sign ({codes})"[:200])
    kinds = {k for k, _ in found}
    if len(kinds) > 1:
        return Rejection("ambiguous_code", f"code: maps to {sorted(kinds)}")
    found.sort(key=lambda kc: not kc[1].startswith(LOINC))
    return found[0]


def _unit_of(kind: str, quantity: dict[str, Any], field: str) -> tuple[str, str] | Rejection:
    """(contract UCUM unit, original spelling) of a Quantity: UCUM ``code`` first, then ``unit``."""
    aliases = _UNIT_ALIASES[kind]
    for key in ("code", "unit"):
        text = quantity.get(key)
        if isinstance(text, str) and text.strip().lower() in aliases:
            return aliases[text.strip().lower()], text.strip()
    shown = quantity.get("code", quantity.get("unit"))
    return Rejection("invalid_unit", f"{field}: unit {str(shown)[:40]!r} is not allowed for {kind}")


def _quantity(kind: str, quantity: Any, field: str) -> tuple[float, str, str] | Rejection:
    """(value in the canonical unit, canonical unit, original unit) of a valueQuantity."""
    if not isinstance(quantity, dict):
        return Rejection("missing_field", f"{field}: missing")
    value = as_number(quantity.get("value"), f"{field}.value")
    if isinstance(value, Rejection):
        return value
    unit = _unit_of(kind, quantity, field)
    if isinstance(unit, Rejection):
        return unit
    ucum, original = unit
    if kind == "blood_pressure":
        return value, ucum, original
    return to_canonical(kind, value, ucum), CANONICAL_UNIT[kind], original


def _reference_id(ref: Any, resource_type: str, index: dict[str, dict[str, Any]]) -> Any:
    """The id behind a Reference: ``Type/id`` (relative or absolute URL), or a Bundle ``fullUrl``."""
    ref = _dict(ref)
    text = ref.get("reference")
    if isinstance(text, str):
        text = text.strip()
        if text in index:  # urn:uuid:... or absolute URL of an entry in the same Bundle
            target = index[text]
            if isinstance(target.get("id"), str):
                return target["id"]
            identifiers = _list(target.get("identifier"))
            if identifiers and isinstance(_dict(identifiers[0]).get("value"), str):
                return _dict(identifiers[0])["value"]
        parts = text.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == resource_type:
            return parts[-1]
        if text.startswith("urn:uuid:"):
            return text[len("urn:uuid:") :]
        return text
    identifier = _dict(ref.get("identifier")).get("value")
    return identifier if isinstance(identifier, str) else None


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _effective(obs: dict[str, Any]) -> datetime | Rejection:
    """The event time. A FHIR dateTime may be a date alone (valid, and how the specification's own
    vital-sign examples are dated): it is taken as 00:00 UTC of that day, so unless it arrives
    within the late window of that midnight it is recorded, never paged at a made-up time.
    Partial dates (a year, a month) are refused ``invalid_timestamp``."""
    if "effectiveDateTime" in obs:
        text = obs["effectiveDateTime"]
        if isinstance(text, str) and _DATE_ONLY.fullmatch(text.strip()):
            try:
                return datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                return Rejection("invalid_timestamp", f"effectiveDateTime: not a date {text[:20]!r}")
        return parse_timestamp(text, "effectiveDateTime")
    if "effectiveInstant" in obs:
        return parse_timestamp(obs["effectiveInstant"], "effectiveInstant")
    if "effectivePeriod" in obs:
        return parse_timestamp(_dict(obs["effectivePeriod"]).get("start"), "effectivePeriod.start")
    return Rejection("missing_field", "effective[x]: missing")


def _gateway(obs: dict[str, Any], index: dict[str, dict[str, Any]]) -> Any:
    for ext in _list(obs.get("extension")):
        ext = _dict(ext)
        if ext.get("url") == GATEWAY_EXTENSION:
            return _reference_id(ext.get("valueReference"), "Device", index)
    return None


def decode_observation(
    obs: Any,
    *,
    received_at: datetime,
    patient_id: str | None = None,
    index: dict[str, dict[str, Any]] | None = None,
) -> CanonicalReading | Rejection:
    """One FHIR R4 Observation (a parsed JSON object) -> a canonical reading or a rejection.

    ``patient_id`` is used only when the Observation has no ``subject``. ``index`` maps the
    ``fullUrl`` of Bundle entries to their resources, to resolve ``urn:uuid:`` references.
    ``received_at`` (timezone-aware) anchors the event-time checks of :func:`validate`.
    """
    index = index or {}
    if not isinstance(obs, dict):
        return Rejection("not_an_object", f"Observation: got a JSON {type(obs).__name__}")
    if obs.get("resourceType") != "Observation":
        rtype = str(obs.get("resourceType"))[:40]
        return Rejection("unsupported_format", f"resourceType {rtype!r} is not Observation")
    status = obs.get("status")
    if status in ("entered-in-error", "cancelled"):
        return Rejection("withdrawn_status", f"status: {status}")
    kind_code = _kind_of(obs.get("code"))
    if isinstance(kind_code, Rejection):
        return kind_code
    kind, original_code = kind_code

    reading_id = None
    if obs.get("id") is not None:
        checked = check_identifier(obs.get("id"), "id")
        if isinstance(checked, Rejection):
            return checked
        reading_id = checked
    else:
        # a resource POSTed in a batch has no id yet; its business identifier (the uploader's
        # uuid) is what makes a re-sent batch a duplicate instead of a second reading
        for ident in _list(obs.get("identifier")):
            value = _dict(ident).get("value")
            if isinstance(value, str) and value.strip():
                value = value.strip().removeprefix("urn:uuid:")
                checked = check_identifier(value, "identifier")
                reading_id = checked if isinstance(checked, str) else None
                break

    if "subject" in obs:
        # a subject that names nobody (only a display, an empty reference) is not "no subject":
        # falling back to the configured patient would file a stranger's reading under them
        subject = _reference_id(obs.get("subject"), "Patient", index)
        if subject is None:
            return Rejection("missing_patient", "subject: no reference or identifier")
    else:
        subject = patient_id
    if subject is None:
        return Rejection("missing_patient", "subject: missing and no patient configured")
    patient = check_identifier(subject, "subject")
    if isinstance(patient, Rejection):
        return patient

    # Device and gateway ids are provenance, not the measurement: one that is not a usable
    # identifier (e.g. a contained "#ref") is dropped rather than losing the reading.
    ids: dict[str, str | None] = {}
    for field, raw in (
        ("device", _reference_id(obs.get("device"), "Device", index) if "device" in obs else None),
        ("gateway", _gateway(obs, index)),
    ):
        provenance = None if raw is None else check_identifier(raw, field)
        ids[field] = provenance if isinstance(provenance, str) else None

    measured_at = _effective(obs)
    if isinstance(measured_at, Rejection):
        return measured_at

    value = systolic = diastolic = None
    bounded = None
    if kind == "blood_pressure":
        parts: dict[str, tuple[float, str, str] | Rejection] = {}
        for comp in _list(obs.get("component")):
            comp = _dict(comp)
            codes = set(_codings(comp.get("code")))
            for name, wanted in (("systolic", SYSTOLIC_CODES), ("diastolic", DIASTOLIC_CODES)):
                if codes & wanted and name not in parts:
                    parts[name] = _quantity(kind, comp.get("valueQuantity"), f"component.{name}")
        for name in ("systolic", "diastolic"):
            part = parts.get(name)
            if part is None:
                return Rejection("missing_field", f"component.{name}: missing")
            if isinstance(part, Rejection):
                return part
        sys_part, dia_part = parts["systolic"], parts["diastolic"]
        assert not isinstance(sys_part, Rejection) and not isinstance(dia_part, Rejection)
        systolic, unit, original_unit = sys_part
        diastolic = dia_part[0]
    else:
        if "valueQuantity" not in obs:
            absent = _dict(obs.get("dataAbsentReason")).get("text") or _codings(obs.get("dataAbsentReason"))
            detail = f" (dataAbsentReason {str(absent)[:60]})" if absent else ""
            return Rejection("missing_field", f"valueQuantity: missing{detail}")
        quantity = _quantity(kind, obs.get("valueQuantity"), "valueQuantity")
        if isinstance(quantity, Rejection):
            return quantity
        value, unit, original_unit = quantity
        # a meter's LO/HI comes as "<20 mg/dL" / ">600 mg/dL": the true value is beyond the limit,
        # so the reading is bounded (and a LO still alerts: the limit is below every low threshold)
        bounded = _BOUNDED.get(str(_dict(obs.get("valueQuantity")).get("comparator", "")).strip())

    reading = CanonicalReading(
        reading_id=reading_id,
        patient_id=patient,
        device_id=ids["device"],
        gateway_id=ids["gateway"],
        kind=kind,
        value=value,
        systolic=systolic,
        diastolic=diastolic,
        unit=unit,
        original_unit=original_unit,
        original_code=original_code,
        measured_at=measured_at,
        source="fhir",
        bounded=bounded,
    )
    return validate(reading, received_at=received_at)


def decode(
    obj: Any, *, received_at: datetime, patient_id: str | None = None
) -> list[CanonicalReading | Rejection]:
    """A parsed FHIR resource -> one result per Observation.

    An Observation gives one result; a Bundle one per entry whose resource is an Observation, except
    that a systolic and a diastolic pressure sent as two Observations of the same subject, device and
    time give one blood-pressure reading (a half alone: ``unpaired_component``) (other resources give
    nothing; an entry without a resource gives a ``missing_field`` rejection); a JSON
    array is decoded item by item (items that are not objects give ``not_an_object``). Anything
    else gives a single ``unsupported_format`` rejection.
    """
    if isinstance(obj, list):
        return [
            r
            for item in obj
            for r in (
                decode(item, received_at=received_at, patient_id=patient_id)
                if isinstance(item, dict)
                else [Rejection("not_an_object", f"got a JSON {type(item).__name__}")]
            )
        ]
    if not isinstance(obj, dict):
        return [Rejection("not_an_object", f"got a JSON {type(obj).__name__}")]
    rtype = obj.get("resourceType")
    if rtype == "Observation":
        if _half(obj) is not None:
            return [Rejection("unpaired_component", f"{_half(obj)}: sent alone, without its other half")]
        return [decode_observation(obj, received_at=received_at, patient_id=patient_id)]
    if rtype != "Bundle":
        return [Rejection("unsupported_format", f"resourceType {str(rtype)[:40]!r} is not decoded")]
    entries = [_dict(e) for e in _list(obj.get("entry"))]
    index = {
        e["fullUrl"].strip(): e["resource"]
        for e in entries
        if isinstance(e.get("fullUrl"), str) and isinstance(e.get("resource"), dict)
    }
    results: list[CanonicalReading | Rejection] = []
    halves = _pair_pressures(entries)
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            results.append(Rejection("missing_field", f"entry[{i}].resource: missing"))
        elif i in halves:
            panel = halves[i]
            if panel is None:
                continue  # the diastolic half of a pair: one reading, at the systolic's place
            if isinstance(panel, Rejection):
                results.append(panel)
            else:
                results.append(decode_observation(panel, received_at=received_at, patient_id=patient_id,
                                                  index=index))
        elif resource.get("resourceType") == "Observation":
            results.append(
                decode_observation(resource, received_at=received_at, patient_id=patient_id, index=index)
            )
    return results


def _half(resource: dict[str, Any]) -> str | None:
    """``"systolic"``/``"diastolic"`` for an Observation coded only as one half of a pressure."""
    codes = set(_codings(resource.get("code")))
    if any(code in (LOINC_KINDS if system == LOINC else MDC_KINDS) for system, code in codes
           if system in (LOINC, MDC)):
        return None  # a panel (or another vital sign): decoded as it is
    if codes & SYSTOLIC_CODES:
        return "systolic"
    if codes & DIASTOLIC_CODES:
        return "diastolic"
    return None


def _pair_pressures(entries: list[dict[str, Any]]) -> dict[int, dict[str, Any] | Rejection | None]:
    """Systolic and diastolic pressures sent as two Observations (as some gateways do) paired by
    subject, device and effective time into one blood-pressure panel. Entry index -> the panel
    (at the systolic's index), ``None`` (the diastolic of a pair) or an ``unpaired_component``
    rejection (a half without its other half)."""
    groups: dict[str, dict[str, list[int]]] = {}
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            continue
        half = _half(resource)
        if half is None:
            continue
        key = json.dumps([resource.get(k) for k in ("subject", "device", "effectiveDateTime",
                                                    "effectiveInstant", "effectivePeriod")],
                         sort_keys=True, default=str)
        groups.setdefault(key, {"systolic": [], "diastolic": []})[half].append(i)
    out: dict[int, dict[str, Any] | Rejection | None] = {}
    for group in groups.values():
        if len(group["systolic"]) != 1 or len(group["diastolic"]) != 1:  # none, or not one of each
            for half, indices in group.items():
                for i in indices:
                    out[i] = Rejection("unpaired_component",
                                       f"{half}: no single other half with the same subject, device and time")
            continue
        (sys_i,), (dia_i,) = group["systolic"], group["diastolic"]
        sys_obs, dia_obs = entries[sys_i]["resource"], entries[dia_i]["resource"]
        panel = {k: v for k, v in sys_obs.items() if k not in ("code", "valueQuantity", "component")}
        panel["code"] = {"coding": [{"system": LOINC, "code": "85354-9"}]}
        panel["component"] = [{"code": o.get("code"), "valueQuantity": o.get("valueQuantity")}
                              for o in (sys_obs, dia_obs)]
        out[sys_i], out[dia_i] = panel, None
    return out


def decode_bytes(
    raw: bytes, *, received_at: datetime, patient_id: str | None = None
) -> list[CanonicalReading | Rejection]:
    """Raw UTF-8 JSON bytes -> :func:`decode`; undecodable bytes give one rejection. Never raises."""
    obj = load_json(raw)
    if isinstance(obj, Rejection):
        return [obj]
    return decode(obj, received_at=received_at, patient_id=patient_id)
