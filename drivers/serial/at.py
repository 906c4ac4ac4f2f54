"""AT commands of cellular modems (3GPP TS 27.007 / 27.005), sans-I/O: bytes in, events out.

Three pieces, none of which does I/O:

- :class:`AtParser`: the modem's byte stream -> :class:`Final` results (``OK``, ``ERROR``,
  ``+CME ERROR: n``, ``+CMS ERROR: n`` in numeric and verbose forms, with the intermediate lines of
  the command), the :class:`Prompt` of ``AT+CMGS`` (``> `` without a line end), and unsolicited
  result codes (:class:`Urc`: ``+CDS`` delivery reports with their PDU line, ``+CMTI``, ``RING``...).
  The echo of a command (before ``ATE0`` takes effect) is recognised and dropped.
- Typed errors (:class:`ModemError` and subclasses) from the standard CME/CMS codes
  (:func:`error_from`): SIM missing, PIN needed, not registered, no credit, network timeout...
- SMS in PDU mode (3GPP TS 23.040 / 23.038): :func:`encode_sms` chooses the GSM 7-bit default
  alphabet (with its extension table) when the text allows it and UCS2 otherwise (Chinese), and cuts
  a long text into concatenated parts (153 septets / 67 UCS2 characters each, 160 / 70 for one part).
  :func:`decode_submit` and :func:`decode_status_report` read PDUs back (the simulator and the
  delivery reports).

Why PDU mode (``AT+CMGF=0``) and not text mode: text mode cannot carry the user-data header that
concatenation needs, and its UCS2 needs ``AT+CSCS="UCS2"`` with hex text anyway. The three modems the
driver targets (SIMCom SIM7600, Quectel EC25, Huawei E3372 in serial mode) all speak PDU mode; a
delivery report in PDU mode is a complete SMS-STATUS-REPORT, matched to the sent part by its
message reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from drivers.base import FrameError, TransientDeviceError

# --------------------------------------------------------------------------------------------------
# Commands as shown
# --------------------------------------------------------------------------------------------------

# The commands whose arguments are secrets (27.007 8.3 +CPIN, 7.5 +CPWD, 7.4 +CLCK): their text goes
# into error messages, health and logs only through shown().
_SECRET_ARGS = re.compile(r"^(AT\+(?:CPIN|CPWD|CLCK))=.*$", re.IGNORECASE | re.DOTALL)


def shown(line: str) -> str:
    """A command line as errors, health and logs may show it: ``AT+CPIN="1234"`` -> ``AT+CPIN=<redacted>``."""
    return _SECRET_ARGS.sub(r"\1=<redacted>", line.strip())


# --------------------------------------------------------------------------------------------------
# Numbers in answers
# --------------------------------------------------------------------------------------------------

# ASCII digits only, and few enough that int() is cheap and bounded: str.isdigit() is true for "²"
# (which int() refuses) and int() itself takes other scripts' digits (Arabic-Indic "٣", fullwidth
# U+FF13), "+1" and "1_0", none of which a modem sends as a number. 9 digits cover every code, state
# and reference of 27.007 / 27.005.
_ASCII_INT = re.compile(r"[0-9]{1,9}")


def ascii_int(text: str) -> int | None:
    """``"42"`` -> 42; None for anything that is not 1-9 ASCII digits (surrounding blanks allowed)."""
    text = text.strip()
    return int(text) if _ASCII_INT.fullmatch(text) else None


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Final:
    """The end of a command: ``ok`` or the error, with the intermediate lines that preceded it."""

    ok: bool
    lines: tuple[str, ...] = ()
    error: ModemError | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """``> ``: the modem waits for the PDU of ``AT+CMGS`` (ended by Ctrl-Z)."""


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: ``name`` is ``+CDS``, ``+CMTI``, ``RING``, ``+CREG``...; ``value``
    what follows ``: ``; ``pdu`` the second line of the two-line codes (``+CDS``, ``+CMT``)."""

    name: str
    value: str = ""
    pdu: str | None = None


AtEvent = Final | Prompt | Urc

# Codes that are always unsolicited (27.005 3.4.1 / 27.007 / common vendor ones), and the two-line ones.
URC_NAMES = frozenset(
    {
        "+CDS",
        "+CDSI",
        "+CMT",
        "+CMTI",
        "+CBM",
        "RING",
        "NO CARRIER",
        "+CLIP",
        "+CRING",
        "^RSSI",
        "^MODE",
        "^BOOT",
        "RDY",
        "+CPIN",
        "+CFUN",
        "SMS DONE",
        "PB DONE",
        "+QIND",
        "^SRVST",
        "^SIMST",
    }
)
TWO_LINE_URCS = frozenset({"+CDS", "+CMT", "+CBM"})
# Lines that are a final result code (V1 verbose form, 27.007 5.7 / ITU-T V.250).
FINAL_OK = frozenset({"OK"})
FINAL_ERRORS = frozenset({"ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER", "COMMAND NOT SUPPORT"})


def _name_of(line: str) -> str:
    if line.startswith(("+", "^")) and ":" in line:
        return line.split(":", 1)[0].strip().upper()
    return line.strip().upper()


@dataclass
class AtParser:
    """The byte stream of a modem -> events. Call :meth:`command_sent` with each command line (without
    its CR) before writing it: lines while a command is pending are its intermediate results, except
    the codes that are always unsolicited; while none is pending every line is a URC.

    Robust by construction: any byte sequence is accepted and :meth:`feed` never raises (invalid
    UTF-8 is replaced, overlong lines are cut at :attr:`max_line` and counted, a number that is not
    ASCII digits is text), a partial line waits for its end.
    """

    max_line: int = 4096
    pending: str | None = None  # the command line awaiting its final result
    garbage_lines: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _lines: list[str] = field(default_factory=list)
    _two_line: tuple[str, str] | None = None  # a +CDS header waiting for its PDU line
    _awaiting_prompt: bool = False

    def command_sent(self, line: str, *, prompt: bool = False) -> None:
        self.pending = line.strip()
        self._lines = []
        self._awaiting_prompt = prompt

    def feed(self, data: bytes) -> list[AtEvent]:
        self._buf.extend(data)
        out: list[AtEvent] = []
        while True:
            if self._awaiting_prompt:
                # The prompt is "\r\n> " (or "> "): no line end follows it.
                stripped = self._buf.lstrip(b"\r\n")
                if stripped.startswith(b">"):
                    del self._buf[: len(self._buf) - len(stripped) + 1]
                    if self._buf[:1] == b" ":
                        del self._buf[:1]
                    self._awaiting_prompt = False
                    out.append(Prompt())
                    continue
            cut = _line_end(self._buf)
            if cut is None:
                if len(self._buf) > self.max_line:
                    self.garbage_lines += 1
                    self._buf.clear()
                break
            raw = bytes(self._buf[:cut])
            del self._buf[: cut + 1]
            line = raw.decode("utf-8", "replace").strip()
            if line:
                out += self._line(line)
        return out

    def _line(self, line: str) -> list[AtEvent]:
        if self._two_line is not None:
            name, value = self._two_line
            self._two_line = None
            if _HEX_RE.fullmatch(line):
                return [Urc(name, value, line)]
            self.garbage_lines += 1  # the PDU line was lost: this line is something else
        pending = self.pending
        if pending is not None and line.upper() == pending.upper():
            return []  # the echo of our command (ATE1, before ATE0 took effect)
        upper = line.upper()
        if pending is None and upper.startswith("AT"):
            return []  # an echo arriving after its own final result: nothing to say
        name = _name_of(line)
        if name in TWO_LINE_URCS:
            self._two_line = (name, line.split(":", 1)[1].strip() if ":" in line else "")
            return []
        if name in URC_NAMES and not (pending is not None and _answers(pending, name)):
            value = line.split(":", 1)[1].strip() if ":" in line else ""
            return [Urc(name, value)]
        if pending is None:
            if upper in FINAL_OK or upper in FINAL_ERRORS or upper.startswith(("+CME ERROR", "+CMS ERROR")):
                self.garbage_lines += 1  # a result nobody asked for (a command that timed out)
                return []
            value = line.split(":", 1)[1].strip() if ":" in line else ""
            return [Urc(name, value)]
        error: ModemError | None = None
        if upper in FINAL_OK:
            return [self._final(True, None)]
        if upper in FINAL_ERRORS:
            return [self._final(False, CommandError(f"{shown(pending)}: {line}"))]
        if upper.startswith("+CME ERROR:") or upper.startswith("+CMS ERROR:"):
            family = "cme" if upper.startswith("+CME") else "cms"
            error = error_from(family, line.split(":", 1)[1].strip(), shown(pending))
            return [self._final(False, error)]
        self._lines.append(line)
        return []

    def _final(self, ok: bool, error: ModemError | None) -> Final:
        ev = Final(ok, tuple(self._lines), error)
        self._lines = []
        self.pending = None
        self._awaiting_prompt = False
        return ev


_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")


def _answers(command: str, name: str) -> bool:
    """``AT+CPIN?`` answers ``+CPIN: READY``: the line is its result, not a URC."""
    cmd = command.upper()
    return cmd.startswith("AT" + name) if name.startswith(("+", "^")) else False


def _line_end(buf: bytearray) -> int | None:
    for i, b in enumerate(buf):
        if b in (0x0D, 0x0A):
            return i
    return None


def response_value(lines: Sequence[str], prefix: str) -> str | None:
    """The text after ``prefix: `` in the intermediate lines of a command, e.g. ``+CSQ`` -> ``"21,99"``."""
    for line in lines:
        if line.upper().startswith(prefix.upper() + ":"):
            return line.split(":", 1)[1].strip()
    return None


# --------------------------------------------------------------------------------------------------
# Typed errors
# --------------------------------------------------------------------------------------------------


class ModemError(TransientDeviceError):
    """A command failed. Transient for the port's reconnection: an answer that went wrong, a modem that
    did not answer in time (a session ending on one reopens the port with backoff). ``reason``: a
    stable word for records and the cloud (``sim_missing``...).
    Whether to retry is the caller's policy (the SMS fallback retries SIM and network failures
    without counting them, and stops for a number the network rejects)."""

    reason: ClassVar[str] = "modem_error"

    def __init__(self, message: str, *, family: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.family, self.code = family, code


class CommandError(ModemError):
    """A plain ``ERROR`` (no extended code), or an unknown code."""


class CommandTimeout(ModemError):
    reason = "timeout"


class SimMissing(ModemError):
    reason = "sim_missing"


class SimPinRequired(ModemError):
    reason = "sim_pin_required"


class SimPukRequired(ModemError):
    reason = "sim_puk_required"


class WrongPin(ModemError):
    reason = "sim_wrong_pin"


class SimFailure(ModemError):
    reason = "sim_failure"


class SimBusy(ModemError):
    reason = "sim_busy"


class NotRegistered(ModemError):
    """No network service (no coverage, searching, registration denied)."""

    reason = "not_registered"


class NetworkTimeout(ModemError):
    reason = "network_timeout"


class NetworkFailure(ModemError):
    """The network could not take the message now (out of order, temporary failure, congestion)."""

    reason = "network_failure"


class NoCredit(ModemError):
    """The network refused the message: on prepaid SIMs usually no credit, else SMS not subscribed."""

    reason = "no_credit"


class RecipientRejected(ModemError):
    """The number is unassigned, barred or unreachable."""

    reason = "recipient_rejected"


class SmscUnknown(ModemError):
    reason = "smsc_unknown"


# 27.007 9.2.1 (+CME ERROR) numeric codes and their verbose texts.
CME: dict[int, tuple[type[ModemError], str]] = {
    3: (CommandError, "operation not allowed"),
    4: (CommandError, "operation not supported"),
    10: (SimMissing, "SIM not inserted"),
    11: (SimPinRequired, "SIM PIN required"),
    12: (SimPukRequired, "SIM PUK required"),
    13: (SimFailure, "SIM failure"),
    14: (SimBusy, "SIM busy"),
    15: (SimFailure, "SIM wrong"),
    16: (WrongPin, "incorrect password"),
    17: (SimPinRequired, "SIM PIN2 required"),
    18: (SimPukRequired, "SIM PUK2 required"),
    30: (NotRegistered, "no network service"),
    31: (NetworkTimeout, "network timeout"),
    32: (NotRegistered, "network not allowed - emergency calls only"),
    100: (CommandError, "unknown"),
}
# 27.005 3.2.5 (+CMS ERROR) codes; 0..127 are 24.011 / 23.040 network causes.
CMS: dict[int, tuple[type[ModemError], str]] = {
    1: (RecipientRejected, "unassigned (unallocated) number"),
    8: (RecipientRejected, "operator determined barring"),
    10: (RecipientRejected, "call barred"),
    21: (NoCredit, "short message transfer rejected"),
    27: (RecipientRejected, "destination out of service"),
    28: (RecipientRejected, "unidentified subscriber"),
    29: (NoCredit, "facility rejected"),
    30: (RecipientRejected, "unknown subscriber"),
    38: (NetworkFailure, "network out of order"),
    41: (NetworkFailure, "temporary failure"),
    42: (NetworkFailure, "congestion"),
    47: (NetworkFailure, "resources unavailable, unspecified"),
    50: (NoCredit, "requested facility not subscribed"),
    300: (CommandError, "ME failure"),
    302: (CommandError, "operation not allowed"),
    304: (CommandError, "invalid PDU mode parameter"),
    310: (SimMissing, "SIM not inserted"),
    311: (SimPinRequired, "SIM PIN required"),
    313: (SimFailure, "SIM failure"),
    314: (SimBusy, "SIM busy"),
    316: (SimPukRequired, "SIM PUK required"),
    330: (SmscUnknown, "SMSC address unknown"),
    331: (NotRegistered, "no network service"),
    332: (NetworkTimeout, "network timeout"),
    500: (CommandError, "unknown error"),
}
_VERBOSE: dict[tuple[str, str], int] = {
    **{("cme", text.lower()): code for code, (_, text) in CME.items()},
    **{("cms", text.lower()): code for code, (_, text) in CMS.items()},
}


def error_from(family: str, value: str, command: str = "") -> ModemError:
    """``+CME ERROR: 10`` or ``+CME ERROR: SIM not inserted`` -> :class:`SimMissing`, and so on."""
    table = CME if family == "cme" else CMS
    # Not str.isdigit(): "+CME ERROR: ²" must be an unknown error, not a ValueError out of the parser.
    code = ascii_int(value)
    if code is None:
        code = _VERBOSE.get((family, value.strip().strip('"').lower()))
    cls, text = table.get(code, (CommandError, value)) if code is not None else (CommandError, value)
    where = f"{command}: " if command else ""
    number = f" {code}" if code is not None else ""
    return cls(f"{where}+{family.upper()} ERROR{number} ({text})", family=family, code=code)


# --------------------------------------------------------------------------------------------------
# Registration and signal
# --------------------------------------------------------------------------------------------------

REG_STATES = {
    0: "not_registered",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
}


def parse_reg(value: str) -> str:
    """``+CREG: <n>,<stat>[,...]`` (answer to ``AT+CREG?``) or ``+CREG: <stat>`` (URC) -> state name."""
    parts = [p.strip() for p in value.split(",")]
    stat = ascii_int(parts[1] if len(parts) >= 2 and not parts[1].startswith('"') else parts[0])
    return REG_STATES.get(stat, "unknown") if stat is not None else "unknown"


def registered(state: str) -> bool:
    return state in ("home", "roaming")


def parse_csq(value: str) -> tuple[int | None, int | None]:
    """``+CSQ: <rssi>,<ber>`` -> (CSQ 0..31 or None for 99 "not known", dBm = -113 + 2*CSQ)."""
    rssi = ascii_int(value.split(",")[0])
    if rssi is None or not 0 <= rssi <= 31:
        return None, None
    return rssi, -113 + 2 * rssi


def message_reference(lines: Sequence[str]) -> int | None:
    """TP-MR from the answer to the PDU of ``AT+CMGS`` (``+CMGS: <mr>[,<ackpdu>]``, 27.005 3.5.1):
    0..255, or None when the line is missing or does not hold a one-octet number. The ``OK`` that
    came with it already says the network took the message: None only means that its delivery
    report cannot be matched to it."""
    value = response_value(lines, "+CMGS")
    mr = ascii_int(value.split(",")[0]) if value is not None else None
    return mr if mr is not None and mr <= 0xFF else None  # TP-MR is one octet (23.040 9.2.3.6)


def parse_cops(value: str) -> str | None:
    """``+COPS: 0,0,"CHINA MOBILE",7`` -> ``CHINA MOBILE`` (None when not registered: ``+COPS: 0``)."""
    m = re.search(r'"([^"]*)"', value)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------------
# SMS PDU (3GPP TS 23.040 SMS-SUBMIT / SMS-STATUS-REPORT, TS 23.038 alphabets)
# --------------------------------------------------------------------------------------------------

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_BASIC_INDEX = {ch: i for i, ch in enumerate(GSM7_BASIC) if ch != "\x1b"}
_EXT_REVERSE = {v: k for k, v in GSM7_EXTENSION.items()}
ESC = 0x1B

# Septets (or UCS2 code units) per message: one part / each part of a concatenated message (the
# 6-octet user-data header of 8-bit concatenation takes 7 septets or 3 UCS2 characters).
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
MAX_PARTS = 255

NUMBER_RE = re.compile(r"^\+?[0-9]{3,20}$")


class PduError(FrameError):
    """A PDU that does not decode (or a number/text that cannot be encoded)."""


def gsm7_septets(text: str) -> list[int] | None:
    """The text in the GSM default alphabet (extension characters as ESC + code), or None when a
    character is in neither table (the text needs UCS2)."""
    out: list[int] = []
    for ch in text:
        i = _BASIC_INDEX.get(ch)
        if i is not None:
            out.append(i)
            continue
        e = GSM7_EXTENSION.get(ch)
        if e is None:
            return None
        out += [ESC, e]
    return out


def septets_to_text(septets: Sequence[int]) -> str:
    out: list[str] = []
    escape = False
    for s in septets:
        if escape:
            out.append(_EXT_REVERSE.get(s, " "))  # 23.038: unknown extension -> space
            escape = False
        elif s == ESC:
            escape = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """7-bit values packed LSB first, after ``fill_bits`` zero bits (to align after a header)."""
    acc, nbits, out = 0, fill_bits, bytearray()
    for s in septets:
        acc |= (s & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits > 0:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    value = int.from_bytes(data, "little")
    return [(value >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def encode_address(number: str) -> bytes:
    """A phone number as TP-DA: length in digits, type (0x91 international, 0x81 national), BCD."""
    if not NUMBER_RE.fullmatch(number):
        raise PduError("a phone number is digits with an optional leading +")
    digits = number.lstrip("+")
    toa = 0x91 if number.startswith("+") else 0x81
    padded = digits + ("F" if len(digits) % 2 else "")
    swapped = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    return bytes([len(digits), toa]) + bytes.fromhex(swapped)


def decode_address(data: bytes, pos: int) -> tuple[str, int]:
    """TP-DA / TP-RA at ``pos`` -> (number, position after it)."""
    try:
        ndigits, toa = data[pos], data[pos + 1]
    except IndexError:
        raise PduError("address truncated") from None
    nbytes = (ndigits + 1) // 2
    raw = data[pos + 2 : pos + 2 + nbytes]
    if len(raw) != nbytes:
        raise PduError("address truncated")
    if toa & 0x70 == 0x50:  # alphanumeric (a sender name)
        text = septets_to_text(unpack_septets(raw, ndigits * 4 // 7))
        return text, pos + 2 + nbytes
    hexs = raw.hex().upper()
    digits = "".join(hexs[i + 1] + hexs[i] for i in range(0, len(hexs), 2))[:ndigits]
    return ("+" if toa & 0x70 == 0x10 else "") + digits, pos + 2 + nbytes


@dataclass(frozen=True, slots=True)
class SubmitPdu:
    """One SMS-SUBMIT as ``AT+CMGS`` takes it: ``hex`` (SMSC octet "00" = the SIM's SMSC, then the
    TPDU) and ``tpdu_length`` (the octets after the SMSC field: the CMGS argument)."""

    hex: str
    tpdu_length: int
    part: int = 1
    parts: int = 1


def split_text(text: str) -> tuple[str, list[list[int]] | list[str]]:
    """("gsm7", septet lists) or ("ucs2", text chunks), cut into message parts. An escape pair or a
    UTF-16 surrogate pair is never split across two parts."""
    septets = gsm7_septets(text)
    if septets is not None:
        if len(septets) <= GSM7_SINGLE:
            return "gsm7", [septets]
        chunks: list[list[int]] = [[]]
        i = 0
        while i < len(septets):
            unit = septets[i : i + 2] if septets[i] == ESC else septets[i : i + 1]
            if len(chunks[-1]) + len(unit) > GSM7_PART:
                chunks.append([])
            chunks[-1].extend(unit)
            i += len(unit)
        return "gsm7", chunks
    units = len(text.encode("utf-16-be")) // 2
    if units <= UCS2_SINGLE:
        return "ucs2", [text]
    parts: list[str] = [""]
    used = 0
    for ch in text:
        n = len(ch.encode("utf-16-be")) // 2
        if used + n > UCS2_PART:
            parts.append("")
            used = 0
        parts[-1] += ch
        used += n
    return "ucs2", parts


def encode_sms(
    number: str,
    text: str,
    *,
    reference: int = 0,
    status_report: bool = True,
    validity: int | None = 0xA7,
    reject_duplicates: bool = False,
    message_ref: int = 0,
) -> list[SubmitPdu]:
    """SMS-SUBMIT PDUs for ``text`` to ``number``: one, or several joined by a concatenation header
    (IEI 0x00, 8-bit ``reference``). ``validity``: TP-VP relative (0xA7 = 24 hours; None: no VP);
    ``status_report`` asks the SMSC for a delivery report (TP-SRR)."""
    if not text:
        raise PduError("an empty text")
    coding, chunks = split_text(text)
    parts = len(chunks)
    if parts > MAX_PARTS:
        raise PduError(f"text too long ({parts} parts)")
    da = encode_address(number)
    out: list[SubmitPdu] = []
    for n, chunk in enumerate(chunks, start=1):
        first = 0x01  # SMS-SUBMIT
        if reject_duplicates:
            first |= 0x04
        if validity is not None:
            first |= 0x10  # TP-VPF relative
        if status_report:
            first |= 0x20
        udh = b""
        if parts > 1:
            first |= 0x40  # TP-UDHI
            udh = bytes([0x05, 0x00, 0x03, reference & 0xFF, parts, n])
        if coding == "gsm7":
            assert isinstance(chunk, list)
            fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
            header_septets = (len(udh) * 8 + fill) // 7
            udl = header_septets + len(chunk)
            body = udh + pack_septets(chunk, fill)
            dcs = 0x00
        else:
            assert isinstance(chunk, str)
            payload = chunk.encode("utf-16-be")
            body = udh + payload
            udl = len(body)
            dcs = 0x08
        tpdu = bytes([first, message_ref & 0xFF]) + da + bytes([0x00, dcs])
        if validity is not None:
            tpdu += bytes([validity & 0xFF])
        tpdu += bytes([udl]) + body
        out.append(SubmitPdu(("00" + tpdu.hex()).upper(), len(tpdu), n, parts))
    return out


@dataclass(frozen=True, slots=True)
class DecodedSubmit:
    number: str
    text: str
    coding: str  # "gsm7" | "ucs2" | "8bit"
    status_report: bool
    message_ref: int
    concat: tuple[int, int, int] | None  # (reference, parts, part)


def _skip_smsc(data: bytes) -> int:
    if not data:
        raise PduError("empty PDU")
    return 1 + data[0]


def _udh_concat(udh: bytes) -> tuple[int, int, int] | None:
    i = 0
    while i + 2 <= len(udh):
        iei, ln = udh[i], udh[i + 1]
        val = udh[i + 2 : i + 2 + ln]
        if iei == 0x00 and ln == 3 and len(val) == 3:
            return val[0], val[1], val[2]
        if iei == 0x08 and ln == 4 and len(val) == 4:
            return (val[0] << 8) | val[1], val[2], val[3]
        i += 2 + ln
    return None


def _tpdu_head(pdu_hex: str, with_smsc: bool, mti: int, name: str) -> tuple[bytes, int, int, str, int]:
    """The start every TPDU we read shares: (octets, first octet, TP-MR, the address, position after it)."""
    try:
        data = bytes.fromhex(pdu_hex.strip())
    except ValueError:
        raise PduError("not hexadecimal") from None
    try:
        pos = _skip_smsc(data) if with_smsc else 0
        first = data[pos]
        if first & 0x03 != mti:
            raise PduError(f"not an {name} (first octet {first:02x})")
        number, after = decode_address(data, pos + 2)
        return data, first, data[pos + 1], number, after
    except IndexError:
        raise PduError("PDU truncated") from None


def decode_submit(pdu_hex: str, *, with_smsc: bool = True) -> DecodedSubmit:
    """An SMS-SUBMIT PDU (as written after ``AT+CMGS``) -> number, text and header facts."""
    data, first, mr, number, pos = _tpdu_head(pdu_hex, with_smsc, 0x01, "SMS-SUBMIT")
    try:
        dcs = data[pos + 1]
        pos += 2
        vpf = (first >> 3) & 0x03
        pos += {0: 0, 2: 1, 1: 7, 3: 7}[vpf]
        udl = data[pos]
        ud = data[pos + 1 :]
    except IndexError:
        raise PduError("PDU truncated") from None
    udhi = bool(first & 0x40)
    concat = None
    header_len = 0
    if udhi:
        if not ud:
            raise PduError("header flag without a header")
        header_len = ud[0] + 1
        concat = _udh_concat(ud[1:header_len])
    alphabet = (dcs >> 2) & 0x03 if dcs & 0xC0 == 0 else 0
    if alphabet == 0:
        fill = (7 - (header_len * 8) % 7) % 7 if udhi else 0
        header_septets = (header_len * 8 + fill) // 7 if udhi else 0
        count = udl - header_septets
        needed = (udl * 7 + 7) // 8
        if count < 0 or len(ud) < needed:
            raise PduError("user data shorter than its length")
        septets = unpack_septets(ud[header_len:], count, fill)
        text, coding = septets_to_text(septets), "gsm7"
    elif alphabet == 2:
        if len(ud) < udl:
            raise PduError("user data shorter than its length")
        text, coding = ud[header_len:udl].decode("utf-16-be", "replace"), "ucs2"
    else:
        text, coding = ud[header_len:udl].decode("latin-1"), "8bit"
    return DecodedSubmit(number, text, coding, bool(first & 0x20), mr, concat)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT: TP-MR of the message it reports on, the recipient, TP-ST."""

    message_ref: int
    number: str
    status: int

    @property
    def delivered(self) -> bool:
        return self.status < 0x20  # 23.040 9.2.3.15: 0x00-0x1F short message transaction completed

    @property
    def final(self) -> bool:
        """False while the SMSC is still trying (0x20-0x3F temporary error, still trying)."""
        return not 0x20 <= self.status < 0x40


def decode_status_report(pdu_hex: str, *, with_smsc: bool = True) -> StatusReport:
    data, _first, mr, number, pos = _tpdu_head(pdu_hex, with_smsc, 0x02, "SMS-STATUS-REPORT")
    try:
        pos += 14  # TP-SCTS, TP-DT
        status = data[pos]
    except IndexError:
        raise PduError("PDU truncated") from None
    return StatusReport(mr, number, status)


def encode_status_report(message_ref: int, number: str, status: int, stamp: str = "62010100000000") -> str:
    """An SMS-STATUS-REPORT PDU (with an empty SMSC field), as a modem passes it in ``+CDS`` (for the
    simulator; ``stamp`` is used for both TP-SCTS and TP-DT)."""
    ts = bytes.fromhex(stamp)
    tpdu = bytes([0x06, message_ref & 0xFF]) + encode_address(number) + ts + ts + bytes([status & 0xFF])
    return ("00" + tpdu.hex()).upper()


def iter_parts(pdus: Sequence[SubmitPdu]) -> Iterator[tuple[str, str]]:
    """The ``AT+CMGS=<n>`` line and the PDU text (ended by Ctrl-Z) of each part."""
    for p in pdus:
        yield f"AT+CMGS={p.tpdu_length}", p.hex + "\x1a"
