"""AT protocol and SMS PDUs with bytes alone: published vectors, modem transcripts, random input.

PDU vector sources (named per test): the SMS-SUBMIT example of dreamfabric.com/sms ("hellohello" to
+46708251358) and the encode/decode vectors of faucamp/python-gsmmodem ``test/test_pdu.py`` (a
3-part concatenated GSM 7-bit text, a UCS2 text, an SMS-SUBMIT with a status-report request, an
SMS-STATUS-REPORT, and a PDU whose user-data length is invalid). Result-code transcripts follow the
forms of 3GPP TS 27.007 9.2 / 27.005 3.2.5 as the SIM7600 / EC25 manuals show them.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.serial import at
from drivers.serial.at import (
    AtParser,
    Final,
    Prompt,
    Urc,
    decode_status_report,
    decode_submit,
    encode_sms,
    encode_status_report,
    error_from,
)

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipisicing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua.Ut enim ad minim veniam, quinostrud exercitation ullamco laboris nisi ut aliquip ex "
    "ea commodo consequat.Duis aute irure dolor in reprehenderit in voluptate velit esse cillum doloe eu fugiat "
    "nulla pariatur.Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit "
    "anim id est laborum"
)
LOREM_PDUS = [
    "0045000B915121551532F40000A0050003000301986F79B90D4AC3E7F53688FC66BFE5A0799A0E0AB7CB741668FC76CFCB637A995E9"
    "783C2E4343C3D4F8FD3EE33A8CC4ED359A079990C22BF41E5747DDE7E9341F4721BFE9683D2EE719A9C26D7DD74509D0E6287C56F7919"
    "54A683C86FF65B5E06B5C36777181466A7E3F5B0AB4A0795DDE936284C06B5D3EE741B642FBBD3E1360B14AFA7DD",
    "0045000B915121551532F40000A0050003000302DE73BABC4E0695F165F9384D0FD3D36F37A8CE6687DBE337881D16BFE5E939C89D9EA"
    "741753A28CC4EC7EB6938A88C0795C3A0F1BBDD7E93DFA0F1DB3D2FC7EB61BA8B584FCF41E13ABD0C4ACBEBF23288FC66BFE5A0B41B24"
    "2FC3E56574D94D2ECBD37450DA0DB2BFD975383D4C2F83EC65769A0E2ACFE765D038CD66D7DB20F29BFD2E83CA",
    "0045000B915121551532F400008C050003000303EA2073FD9C0ED341EE3A9B1D06C1C3F274985E97BB8AF871194E2FD7E5A079DA4D07BD"
    "C7E370791CA683C675789A1CA687E920F7DB0D82CBDF6972D94D6781E675371D947683C675363C0C8AD7D3A0B7D99C1EA7C32072795E9"
    "6D7DD7450FBCD66A7E9A0B03BDD06A5C9A0F29C0E6287C56F79BD0D",
]


# -- PDUs: published vectors -----------------------------------------------------------------------


def test_single_gsm7_submit_matches_dreamfabric() -> None:
    (pdu,) = encode_sms("+46708251358", "hellohello", status_report=False, validity=0xAA)
    assert pdu.hex == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert pdu.tpdu_length == 23  # the AT+CMGS argument: octets after the SMSC field


def test_concatenated_gsm7_matches_python_gsmmodem() -> None:
    pdus = encode_sms("+15125551234", LOREM, reference=0, status_report=False, validity=None, reject_duplicates=True)
    assert [p.hex for p in pdus] == LOREM_PDUS
    assert [(p.part, p.parts) for p in pdus] == [(1, 3), (2, 3), (3, 3)]
    decoded = [decode_submit(p) for p in LOREM_PDUS]
    assert "".join(d.text for d in decoded) == LOREM
    assert [d.concat for d in decoded] == [(0, 3, 1), (0, 3, 2), (0, 3, 3)]


def test_ucs2_submit_matches_python_gsmmodem() -> None:
    # The vector names the SMSC +44000000000 (07914400000000F0); we always leave it to the SIM ("00").
    (pdu,) = encode_sms("+123456789", "世界您好\uff01", status_report=False, validity=0xF4)
    assert pdu.hex == "00" + "1100099121436587F90008F40A4E16754C60A8597DFF01"
    d = decode_submit("07914400000000F01100099121436587F90008F40A4E16754C60A8597DFF01")
    assert (d.number, d.text, d.coding) == ("+123456789", "世界您好\uff01", "ucs2")


def test_submit_with_status_report_request_decodes() -> None:
    d = decode_submit("07911326040000F0310D0B911326880736F40000A90FF7FBDD454E87CDE1B0DB357EB701")
    assert (d.number, d.text, d.status_report, d.message_ref) == ("+31628870634", "www.diafaan.com", True, 13)


def test_status_report_decodes_and_round_trips() -> None:
    r = decode_status_report("0006D60B911326880736F4111011719551401110117195714000")
    assert (r.message_ref, r.number, r.status, r.delivered, r.final) == (214, "+31628870634", 0, True, True)
    again = decode_status_report(encode_status_report(214, "+31628870634", 0x41))
    assert (again.message_ref, again.delivered, again.final) == (214, False, True)
    pending = decode_status_report(encode_status_report(7, "+8613800138000", 0x21))
    assert not pending.delivered and not pending.final  # the SMSC is still trying


def test_invalid_user_data_length_is_an_error_not_a_crash() -> None:
    # python-gsmmodem: "User data length is invalid in this PDU (too long)"
    try:
        decode_submit("0041010C910661345542F60008A0050003000301306F3044")
    except at.PduError:
        pass
    else:
        raise AssertionError("a UDL longer than the data must raise PduError")


# -- PDUs: encoding choice and segmentation -----------------------------------------------------


def test_extension_characters_count_twice_and_stay_gsm7() -> None:
    text = "€" * 80  # 160 septets: one part exactly
    (pdu,) = encode_sms("+8613800138000", text)
    d = decode_submit(pdu.hex)
    assert (d.coding, d.text) == ("gsm7", text)
    two = encode_sms("+8613800138000", text + "a")
    assert len(two) == 2 and "".join(decode_submit(p.hex).text for p in two) == text + "a"
    # an escape pair is never cut in half across parts
    assert all(not decode_submit(p.hex).text.endswith("\x1b") for p in two)


def test_chinese_needs_ucs2_and_cuts_at_67() -> None:
    text = "紧急呼叫" * 18  # 72 characters: more than one part's 70
    pdus = encode_sms("+8613800138000", text)
    decoded = [decode_submit(p.hex) for p in pdus]
    assert [d.coding for d in decoded] == ["ucs2", "ucs2"]
    assert [len(d.text) for d in decoded] == [67, 5]
    assert all(ud_octets(p.tpdu_length) <= 140 for p in pdus)
    assert len(encode_sms("+8613800138000", "紧" * 70)) == 1


def test_bad_numbers_are_refused() -> None:
    for bad in ("", "12", "+86-138", "00 86 138", "+" + "1" * 21):
        try:
            encode_sms(bad, "x")
        except at.PduError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def ud_octets(tpdu_length: int, number: str = "+8613800138000") -> int:
    """The user data's octets: the TPDU less first octet, MR, address, PID, DCS, VP and UDL."""
    return tpdu_length - (2 + len(at.encode_address(number)) + 2 + 1 + 1)


gsm_chars = st.sampled_from(sorted(set(at.GSM7_BASIC) - {"\x1b"}) + sorted(at.GSM7_EXTENSION))
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=500)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(alphabet=gsm_chars, min_size=1, max_size=600), any_text), st.integers(0, 255))
def test_any_text_round_trips_through_its_parts(text: str, ref: int) -> None:
    pdus = encode_sms("+8613800138000", text, reference=ref)
    decoded = [decode_submit(p.hex) for p in pdus]
    assert "".join(d.text for d in decoded) == text
    assert all(p.tpdu_length == len(bytes.fromhex(p.hex)) - 1 for p in pdus)
    assert all(ud_octets(p.tpdu_length) <= 140 for p in pdus)
    if len(pdus) > 1:
        assert [d.concat for d in decoded] == [(ref, len(pdus), i + 1) for i in range(len(pdus))]
    coding = decoded[0].coding
    assert coding == ("gsm7" if at.gsm7_septets(text) is not None else "ucs2")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_pdus_raise_pdu_error_or_decode(data: bytes) -> None:
    for fn in (decode_submit, decode_status_report):
        try:
            fn(data.hex())
        except at.PduError:
            pass


# -- result codes ------------------------------------------------------------------------------


def feed_all(p: AtParser, data: bytes, step: int = 0) -> list[object]:
    if not step:
        return list(p.feed(data))
    out: list[object] = []
    for i in range(0, len(data), step):
        out += p.feed(data[i : i + step])
    return out


def test_ok_with_intermediate_lines_and_echo_before_ate0() -> None:
    p = AtParser()
    p.command_sent("AT+CSQ")
    # ATE1 (the default): the modem echoes "AT+CSQ\r" before its answer.
    evs = feed_all(p, b"AT+CSQ\r\r\n+CSQ: 21,99\r\n\r\nOK\r\n", step=3)
    assert evs == [Final(True, ("+CSQ: 21,99",))]
    assert at.parse_csq(at.response_value(("+CSQ: 21,99",), "+CSQ") or "") == (21, -71)
    assert at.parse_csq("99,99") == (None, None)


def test_cme_errors_numeric_and_verbose_are_typed() -> None:
    p = AtParser()
    p.command_sent("AT+CPIN?")
    (ev,) = p.feed(b"\r\n+CME ERROR: 10\r\n")
    assert isinstance(ev, Final) and isinstance(ev.error, at.SimMissing) and ev.error.code == 10
    p.command_sent("AT+CPIN?")
    (ev,) = p.feed(b"\r\n+CME ERROR: SIM PIN required\r\n")
    assert isinstance(ev, Final) and isinstance(ev.error, at.SimPinRequired)
    assert ev.error.reason == "sim_pin_required"
    assert isinstance(error_from("cme", "31"), at.NetworkTimeout)
    assert isinstance(error_from("cme", "no network service"), at.NotRegistered)
    assert type(error_from("cme", "something vendor-specific")) is at.CommandError


def test_errors_of_secret_commands_do_not_carry_the_secret() -> None:
    p = AtParser()
    p.command_sent('AT+CPIN="2468"')
    assert p.feed(b'AT+CPIN="2468"\r\n') == []  # its echo (before ATE0) is still recognised
    (ev,) = p.feed(b"\r\n+CME ERROR: 16\r\n")
    assert isinstance(ev, Final) and isinstance(ev.error, at.WrongPin)
    assert "2468" not in str(ev.error) and "AT+CPIN=<redacted>" in str(ev.error)
    p.command_sent('at+clck="SC",1,"2468"')
    (ev,) = p.feed(b"\r\nERROR\r\n")
    assert isinstance(ev, Final) and "2468" not in str(ev.error)
    assert at.shown('AT+CPWD="SC","1111","2222"') == "AT+CPWD=<redacted>"
    assert at.shown("AT+CPIN?") == "AT+CPIN?" and at.shown("AT+CMGS=23") == "AT+CMGS=23"


def test_cms_errors_map_to_what_the_alarm_needs() -> None:
    assert isinstance(error_from("cms", "38"), at.NetworkFailure) and error_from("cms", "38").code == 38
    assert isinstance(error_from("cms", "Network out of order"), at.NetworkFailure)
    assert isinstance(error_from("cms", "21"), at.NoCredit) and error_from("cms", "21").reason == "no_credit"
    assert isinstance(error_from("cms", "50"), at.NoCredit)
    assert isinstance(error_from("cms", "332"), at.NetworkTimeout)
    assert isinstance(error_from("cms", "331"), at.NotRegistered)
    assert isinstance(error_from("cms", "1"), at.RecipientRejected)
    assert isinstance(error_from("cms", "330"), at.SmscUnknown)
    p = AtParser()
    p.command_sent("AT+CMGS=23", prompt=True)
    assert p.feed(b"\r\n> ") == [Prompt()]
    (ev,) = p.feed(b"\r\n+CMS ERROR: 38\r\n")
    assert isinstance(ev, Final) and isinstance(ev.error, at.NetworkFailure)


def test_cmgs_prompt_then_message_reference() -> None:
    p = AtParser()
    p.command_sent("AT+CMGS=23", prompt=True)
    evs = feed_all(p, b"\r\n> ", step=1)
    assert evs == [Prompt()]
    p.pending = "AT+CMGS=23"
    evs = feed_all(p, b"\r\n+CMGS: 42\r\n\r\nOK\r\n", step=2)
    assert evs == [Final(True, ("+CMGS: 42",))]


def test_urcs_arrive_between_and_during_commands() -> None:
    p = AtParser()
    pdu = encode_status_report(42, "+8613800138000", 0)
    stream = b'\r\nRING\r\n\r\n+CMTI: "SM",3\r\n\r\n+CDS: 25\r\n' + pdu.encode() + b"\r\n"
    evs = feed_all(p, stream, step=5)
    assert evs == [Urc("RING"), Urc("+CMTI", '"SM",3'), Urc("+CDS", "25", pdu)]
    # A delivery report in the middle of a command's answer is still a URC, not an intermediate line.
    p.command_sent("AT+CSQ")
    evs = feed_all(p, b"\r\n+CDS: 25\r\n" + pdu.encode() + b"\r\n+CSQ: 10,0\r\n\r\nOK\r\n")
    assert evs == [Urc("+CDS", "25", pdu), Final(True, ("+CSQ: 10,0",))]
    # +CPIN is a URC after a SIM swap, but the answer of AT+CPIN? while that command is pending.
    p.command_sent("AT+CPIN?")
    assert p.feed(b"\r\n+CPIN: READY\r\n\r\nOK\r\n") == [Final(True, ("+CPIN: READY",))]
    assert p.feed(b"\r\n+CPIN: NOT READY\r\n") == [Urc("+CPIN", "NOT READY")]


def test_a_delivery_report_that_lost_its_pdu_line_does_not_eat_the_next_answer() -> None:
    p = AtParser()
    p.command_sent("AT")
    assert p.feed(b"\r\n+CDS: 25\r\n\r\nOK\r\n") == [Final(True, ())]
    assert p.garbage_lines == 1


def test_registration_and_operator_answers() -> None:
    assert at.parse_reg("0,1") == "home"
    assert at.parse_reg('2,5,"1A2B","01C2D3E4",7') == "roaming"
    assert at.parse_reg("0,2") == "searching"
    assert at.parse_reg("3") == "denied"  # a URC carries only <stat>
    assert at.parse_reg("garbage") == "unknown"
    assert at.parse_cops('0,0,"CHINA MOBILE",7') == "CHINA MOBILE"
    assert at.parse_cops("0") is None


def test_plain_error_and_stray_results() -> None:
    p = AtParser()
    p.command_sent("AT+CEREG?")
    (ev,) = p.feed(b"\r\nERROR\r\n")
    assert isinstance(ev, Final) and type(ev.error) is at.CommandError
    # a late OK after a command timed out is counted, not taken as an answer
    assert p.feed(b"\r\nOK\r\n") == []
    assert p.garbage_lines == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 17))
def test_random_bytes_never_raise_and_the_next_answer_is_found(noise: bytes, step: int) -> None:
    p = AtParser()
    feed_all(p, noise, step)
    p.feed(b"\r\n")  # the line in progress ends (a modem answer always starts with CR LF)
    p.command_sent("AT")
    evs = feed_all(p, b"\r\nOK\r\n", step)
    assert evs[-1] == Final(True, ())


# -- numbers that are not ASCII digits ---------------------------------------------------------------

# Characters str.isdigit() calls digits: "²" and "①" (int() refuses them), fullwidth 3 and Arabic-Indic
# 3 (int() takes them).
UNICODE_DIGITS = ("²", "①", "\uff13", "٣")


def test_a_cme_error_with_a_unicode_digit_is_an_unknown_error_not_a_crash() -> None:
    p = AtParser()
    p.command_sent("AT+CSQ")
    # The reviewer's bytes: "+CME ERROR: ²" CR LF. It used to raise ValueError out of feed (the
    # modem's reader died and the port reconnected).
    (ev,) = p.feed(bytes.fromhex("2b434d45204552524f523a20c2b20d0a"))
    assert isinstance(ev, Final) and not ev.ok
    assert type(ev.error) is at.CommandError and ev.error.code is None and ev.error.family == "cme"
    p.command_sent("AT")
    assert p.feed(b"\r\nOK\r\n") == [Final(True, ())]  # the parser goes on
    for digit in UNICODE_DIGITS:
        for family in ("cme", "cms"):
            err = error_from(family, digit)
            assert type(err) is at.CommandError and err.code is None, (family, digit)
    assert error_from("cms", "0038").code == 38  # ASCII digits still are numbers
    assert error_from("cme", "9" * 5000).code is None  # not int()'s 4300-digit ValueError either


def test_registration_signal_and_reference_read_ascii_digits_only() -> None:
    for digit in UNICODE_DIGITS:
        assert at.parse_reg(f"0,{digit}") == "unknown"
        assert at.parse_reg(digit) == "unknown"
        assert at.parse_csq(f"{digit},99") == (None, None)
        assert at.message_reference([f"+CMGS: {digit}"]) is None
    assert at.parse_csq("\uff12\uff11,99") == (None, None)  # fullwidth "21": int() would have read 21
    assert at.parse_reg("0,+1") == "unknown" and at.parse_reg("0,1_0") == "unknown"
    assert at.message_reference(["+CMGS: 42"]) == 42
    assert at.message_reference(["+CMGS: 7,00ABCDEF"]) == 7  # with the optional <ackpdu>
    assert at.message_reference(["+CMGS: 256"]) is None  # TP-MR is one octet
    assert at.message_reference([]) is None and at.message_reference(["+CMGS:"]) is None


AT_TOKENS = [
    b"\r\n",
    b"\r",
    b"\n",
    b"OK",
    b"ERROR",
    b"+CME ERROR: ",
    b"+CMS ERROR: ",
    b"+CMGS: ",
    b"+CSQ: ",
    b"+CREG: 1,",
    b"+CDS: 25",
    b"> ",
    b"0791",
    b",",
    b"AT+CSQ",
    b"\xff",
]
# Every character str.isdigit() accepts: ASCII, the decimal digits of other scripts (int() takes
# them) and superscripts, circled and other digits (int() refuses them).
ISDIGIT_CHARS = [chr(c) for c in range(0x110000) if chr(c).isdigit()]
# Values: "numbers" of such characters, or any text.
at_values = st.one_of(
    st.text(alphabet=st.sampled_from(ISDIGIT_CHARS), min_size=1, max_size=4),
    st.text(alphabet=st.one_of(st.characters(codec="ascii"), st.characters()), max_size=12),
)
# Whole answer lines: a result code or an intermediate-result prefix, any value, a line end or not.
at_lines = st.builds(
    lambda head, value, end: head + value.encode("utf-8", "surrogatepass") + end,
    st.sampled_from([b"", b"+CME ERROR: ", b"+CMS ERROR: ", b"+CMGS: ", b"+CSQ: ", b"+CREG: ", b"+CDS: "]),
    at_values,
    st.sampled_from([b"\r\n", b"\r", b""]),
)
# What a modem (or line noise) can put on the port: answer lines and fragments, any text, any bytes;
# and between them, the commands the driver sends.
at_chunks = st.one_of(
    at_lines,
    st.sampled_from(AT_TOKENS),
    st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=24),
)
at_commands = st.tuples(st.sampled_from(["AT", "AT+CSQ", "AT+CPIN?", "AT+CMGS=23", "AT+CREG?"]), st.booleans())


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(at_chunks, at_commands), max_size=40))
@example([("AT+CSQ", False), bytes.fromhex("2b434d45204552524f523a20c2b20d0a")])  # the review's "+CME ERROR: ²"
def test_feed_never_raises_whatever_the_bytes_and_commands(steps: list[bytes | tuple[str, bool]]) -> None:
    """AtParser declares no error (any byte sequence is accepted): nothing may escape feed."""
    p = AtParser()
    for step in steps:
        if isinstance(step, tuple):
            p.command_sent(step[0], prompt=step[1])
            continue
        for ev in p.feed(step):
            assert isinstance(ev, (Final, Prompt, Urc))
            if isinstance(ev, Final) and not ev.ok:
                assert isinstance(ev.error, at.ModemError)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["+CME ERROR: ", "+CMS ERROR: "]), at_values)
def test_any_error_value_is_one_typed_final(prefix: str, value: str) -> None:
    p = AtParser()
    p.command_sent("AT+CMGS=23")
    evs = p.feed(b"\r\n" + (prefix + value).encode("utf-8", "surrogatepass") + b"\r\n")
    if "\r" in value or "\n" in value:
        return  # the value was cut into lines: the other tests cover that
    assert len(evs) == 1
    (ev,) = evs
    assert isinstance(ev, Final) and not ev.ok and isinstance(ev.error, at.ModemError)
