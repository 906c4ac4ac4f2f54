"""The default care rules, from clinical practice. Each rule names its source.

They apply to every person until the config or the cloud replaces that person's rules
(:meth:`gateway.rules.RuleEngine.update_rules`); ``{"base": "<id>", ...}`` changes one default for one
person (a COPD patient's usual saturation is 88-92 %, so ``spo2-low`` at 90 % would cry wolf daily).
See docs/rules.md for the reasoning behind every number.
"""

from __future__ import annotations

from types import MappingProxyType

from drivers import codes
from gateway.rules.spec import Condition, RuleSpec

LOINC_HEART_RATE = codes.HEART_RATE
LOINC_SPO2 = codes.SPO2
LOINC_SYSTOLIC = codes.SYSTOLIC
LOINC_DIASTOLIC = codes.DIASTOLIC
CODE_AF_SCREENING = "homecare:af-screening"

SPO2_LOW = RuleSpec(
    id="spo2-low",
    kind="spo2_low",
    conditions=(Condition(LOINC_SPO2, "<", 90.0, severe_threshold=85.0, hysteresis=2.0),),
    severity="medium",
    severe_severity="high",
    hold_s=60.0,
    clear_hold_s=60.0,
    max_gap_s=15.0,
    min_quality=0.5,
    description="SpO2 below 90 % for 60 s (escalates below 85 %); clears at 92 % or more for 60 s",
    source=(
        "SpO2 < 90 % is hypoxaemia that needs treatment (WHO Pulse Oximetry Training Manual, 2011; "
        "BTS guideline for oxygen use in adults, O'Driscoll et al., Thorax 2017); NEWS2 (Royal College of "
        "Physicians, 2017) scores SpO2 <= 91 % at its maximum of 3. Below 85 %: severe hypoxaemia (BTS). "
        "The 60 s hold filters the short motion and perfusion dips that make most oximetry alarms false."
    ),
)

HR_LOW = RuleSpec(
    id="hr-low",
    kind="hr_low",
    conditions=(Condition(LOINC_HEART_RATE, "<", 40.0, hysteresis=5.0),),
    severity="high",
    hold_s=60.0,
    clear_hold_s=60.0,
    max_gap_s=15.0,
    min_quality=0.5,
    rest_only=True,
    description="heart rate below 40 /min for 60 s at rest; clears at 45 /min or more for 60 s",
    source=(
        "NEWS2 (Royal College of Physicians, 2017) scores a heart rate <= 40 /min at its maximum of 3; "
        "2018 ACC/AHA/HRS bradycardia guideline (Kusumoto et al.): sinus bradycardia is < 50 /min, rates "
        "below 40 /min while awake are a reason to look for conduction disease."
    ),
)

HR_HIGH = RuleSpec(
    id="hr-high",
    kind="hr_high",
    conditions=(Condition(LOINC_HEART_RATE, ">", 130.0, hysteresis=5.0),),
    severity="high",
    hold_s=60.0,
    clear_hold_s=60.0,
    max_gap_s=15.0,
    min_quality=0.5,
    rest_only=True,
    description="heart rate above 130 /min for 60 s at rest; clears at 125 /min or less for 60 s",
    source="NEWS2 (Royal College of Physicians, 2017) scores a heart rate >= 131 /min at its maximum of 3.",
)

BP_CRISIS = RuleSpec(
    id="bp-crisis",
    kind="bp_crisis",
    conditions=(
        Condition(LOINC_SYSTOLIC, ">=", 180.0, hysteresis=10.0),
        Condition(LOINC_DIASTOLIC, ">=", 120.0, hysteresis=10.0),
    ),
    severity="high",
    hold_s=0.0,
    clear_hold_s=0.0,
    description=(
        "systolic >= 180 or diastolic >= 120 mm[Hg] on one cuff reading; clears when a later reading "
        "is below 170 and 110"
    ),
    source=(
        "Hypertensive crisis: SBP > 180 and/or DBP > 120 mm Hg (2017 ACC/AHA high blood pressure "
        "guideline, Whelton et al., Hypertension 2018;71:e13-e115, section 11.2). A cuff gives single "
        "spot readings: one is enough; the care centre decides whether it is an emergency (organ damage)."
    ),
)

AF_FOLLOWUP = RuleSpec(
    id="af-followup",
    kind="af_followup",
    conditions=(Condition(CODE_AF_SCREENING, ">=", 0.1, hysteresis=0.05),),
    severity="low",
    hold_s=0.0,
    clear_hold_s=6 * 3600.0,
    max_gap_s=900.0,
    window_s=3600.0,
    min_quality=0.5,
    description=(
        "AF screening: mean AF burden over an hour >= 0.1 (about 6 min of AF in the hour): a doctor's "
        "follow-up, not an emergency; clears after 6 h of wear with the hourly mean below 0.05"
    ),
    source=(
        "2020 ESC AF guidelines (Hindricks et al.): AF found by screening must be confirmed on an ECG by a "
        "physician before treatment; ASSERT (Healey et al., NEJM 2012): device-detected episodes over "
        "6 minutes are linked with a higher stroke risk."
    ),
)

IRREGULAR_PULSE = RuleSpec(
    id="irregular-pulse",
    kind="irregular_pulse",
    conditions=(Condition(LOINC_SYSTOLIC, "flag", flag="irregular_pulse"),),
    severity="low",
    hold_s=0.0,
    clear_hold_s=0.0,
    description="the cuff flagged an irregular pulse: a doctor's follow-up; clears on a reading without it",
    source=(
        "Cuffs with irregular-heartbeat detection find AF during routine blood pressure readings (NICE "
        "medical technologies guidance MTG13, 2013); the 2020 ESC AF guidelines recommend an ECG to "
        "confirm any irregular pulse found by opportunistic screening at 65 or older."
    ),
)

DEFAULT_RULES: tuple[RuleSpec, ...] = (SPO2_LOW, HR_LOW, HR_HIGH, BP_CRISIS, AF_FOLLOWUP, IRREGULAR_PULSE)
DEFAULTS_BY_ID = MappingProxyType({r.id: r for r in DEFAULT_RULES})
