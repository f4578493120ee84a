"""Trace readers on small files: values, seeding, and one-line errors naming file and line."""

from __future__ import annotations

import pytest

from webhook.simulate.traces import ServiceModel, TraceError, load

SVC = ServiceModel(default_s=2.0, prefill_tokens_per_s=1000.0, decode_s_per_token=0.01)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_timestamps_csv_seconds_and_tokens(tmp_path):
    p = write(tmp_path, "t.csv", "timestamp,input_tokens,output_tokens\n10,1000,100\n12.5,500,0\n")
    (tr,) = load(p, service=SVC)
    assert tr.arrivals == [(0.0, 1, pytest.approx(2.0)), (2.5, 1, pytest.approx(0.5))]
    assert tr.horizon == 3.5


def test_azure_llm_datetimes_with_100ns_fractions(tmp_path):
    p = write(tmp_path, "conv.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n")
    (tr,) = load(p, service=SVC)
    assert tr.arrivals[1][0] == pytest.approx(4.314579)
    assert tr.origin.hour == 18 and tr.day_offset() == pytest.approx(18 * 3600 + 15 * 60 + 46.68059)


def test_jsonl(tmp_path):
    p = write(tmp_path, "t.jsonl", '{"timestamp": 5, "service_s": 3}\n\n{"timestamp": 7}\n')
    (tr,) = load(p, service=SVC)
    assert tr.arrivals == [(0.0, 1, 3.0), (2.0, 1, 2.0)]


def test_counts_are_spread_in_their_interval_and_seeded(tmp_path):
    p = write(tmp_path, "c.csv", "start,count\n0,3\n60,0\n120,2\n")
    a = load(p, seed=7, service=SVC)[0].arrivals
    assert len(a) == 5 and all(0 <= t < 60 for t, _, _ in a[:3]) and all(120 <= t < 180 for t, _, _ in a[3:])
    assert load(p, seed=7, service=SVC)[0].arrivals == a
    assert load(p, seed=8, service=SVC)[0].arrivals != a


def test_rates_are_poisson_inside_windows(tmp_path):
    p = write(tmp_path, "r.csv", "start,rate,duration\n0,2,100\n100,0,100\n")
    (tr,) = load(p, seed=1, service=SVC)
    assert 150 < tr.requests < 250 and max(t for t, _, _ in tr.arrivals) < 100 and tr.horizon == 200


def test_azure_functions_and_servegen(tmp_path):
    d = tmp_path / "af"
    d.mkdir()
    (d / "1350_inv.csv").write_text("HashFunction,HashOwner,HashApp,1,2,3\nf1,o,a,2,0,1\nf2,o,a,0,0,0\n")
    (d / "1350_run.csv").write_text("HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,1500,3\n")
    traces = load(str(d), seed=1)
    assert [t.requests for t in traces] == [3, 0] and traces[0].horizon == 180
    assert traces[0].arrivals[0][2] == 1.5 and 120 <= traces[0].arrivals[2][0] < 180
    sg = tmp_path / "m"
    sg.mkdir()
    (sg / "chunk-0-trace.csv").write_text("0,0,0,,0,0\n600,0.05,1.0,Gamma,1.0,1.0\n")
    (sg / "chunk-1-trace.csv").write_text("0,10,2.0,Weibull,0.5,0.1\n")
    (tr,) = load(str(sg), seed=3, service=SVC)
    per_window = sum(n for t, n, _ in tr.arrivals if t < 600)
    assert 4000 < per_window < 8000 and tr.horizon == 1200     # 10 req/s for 600 s, in groups
    # one workload per client: the model's traffic split back, same seed, same arrivals per client
    (sg / "chunk-2-trace.csv").write_text("0,0,0,,0,0\n")   # never sent anything: left out
    clients = load(str(sg), fmt="servegen-clients", seed=3, service=SVC)
    assert [c.name for c in clients] == ["chunk-0-trace.csv", "chunk-1-trace.csv"]
    assert sum(c.requests for c in clients) == tr.requests
    assert clients[0].horizon == 1200 and clients[1].horizon == 600
    assert all(600 <= t < 1200 for t, _, _ in clients[0].arrivals)
    (one,) = load(str(sg / "chunk-0-trace.csv"), seed=3, service=SVC)   # one client's file, format detected
    assert one.arrivals == clients[0].arrivals
    assert load(str(sg), seed=3, service=SVC)[0].arrivals == tr.arrivals


@pytest.mark.parametrize("name,text,expect", [
    ("a.csv", "when,x\n1,2\n", "a.csv:1: cannot tell the format from the header 'when,x'; pass --format"),
    ("b.csv", "timestamp\n1\nyesterday\n", "b.csv:3: cannot read"),
    ("c.csv", "timestamp\n", "c.csv: the trace has no requests"),
    ("d.csv", "start,count,colour\n0,1,2\n", "d.csv:1: header ['start', 'count', 'colour']: unknown column colour"),
    ("e.jsonl", '{"timestamp": 1}\n{"t": 2}\n', "e.jsonl:2: no timestamp field"),
    ("f.csv", "start,count\n0,1.5\n", "f.csv:2: count 1.5 is not a whole number"),
])
def test_bad_input_is_one_line_with_file_line_and_fix(tmp_path, name, text, expect):
    p = write(tmp_path, name, text)
    with pytest.raises(TraceError) as err:
        load(p, service=SVC)
    msg = str(err.value)
    assert expect in msg and "\n" not in msg and ";" in msg


def test_unknown_timestamp_column_with_an_explicit_format(tmp_path):
    p = write(tmp_path, "a.csv", "when,x\n1,2\n")
    with pytest.raises(TraceError, match=r"a\.csv:1: no timestamp column .*pass --time-column"):
        load(p, "timestamps-csv", service=SVC)
    with pytest.raises(TraceError, match="no such file"):
        load(str(tmp_path / "missing.csv"))


# ------------------------------------------------------------------------------------------ units and bounds

def test_mooncake_milliseconds_and_token_lengths(tmp_path):
    p = write(tmp_path, "mooncake_trace.jsonl",
              '{"timestamp": 0, "input_length": 1000, "output_length": 100, "hash_ids": [0, 1]}\n'
              '{"timestamp": 3600000, "input_length": 2000, "output_length": 0, "hash_ids": [0]}\n')
    (tr,) = load(p, service=SVC)
    assert tr.arrivals == [(0.0, 1, pytest.approx(2.0)), (3600.0, 1, pytest.approx(2.0))]
    assert tr.horizon == pytest.approx(3601.0) and tr.source == "Mooncake trace"
    assert any("milliseconds" in n for n in tr.notes) and any("token counts" in n for n in tr.notes)
    (sec,) = load(p, service=SVC, time_unit="s")                     # the override wins
    assert sec.arrivals[1][0] == 3600000.0


@pytest.mark.parametrize("values,unit,gap", [
    (("1700000000", "1700000060"), "s", 60.0),
    (("1700000000000", "1700000060000"), "ms", 60.0),
    (("1700000000000000", "1700000060000000"), "us", 60.0),
])
def test_epoch_magnitudes_give_the_unit(tmp_path, values, unit, gap):
    p = write(tmp_path, "e.csv", "timestamp\n" + "\n".join(values) + "\n")
    (tr,) = load(p, service=SVC)
    assert tr.arrivals[1][0] == pytest.approx(gap) and any(f"read in {unit}" in n for n in tr.notes)
    assert tr.origin is not None and tr.origin.year == 2023


@pytest.mark.parametrize("name,text,expect", [
    ("n.csv", "timestamp\n0\nnan\n", "n.csv:3: cannot read"),
    ("i.csv", "timestamp\n0\ninf\n", "i.csv:3: cannot read"),
    ("big.csv", "timestamp\n0\n1\n1e15\n", "big.csv:4: the timestamps span"),
    ("tok.csv", "timestamp,input_tokens\n0,nan\n", "tok.csv:2: token count nan is not a finite number"),
    ("r.csv", "start,rate\n600,1e9\n", "r.csv:2: the rows up to here ask for about 600,000,000,000 requests"),
    ("c.csv", "start,count\n0,inf\n", "c.csv:2: count inf is not a finite number"),
    ("s.csv", "start,rate\nnan,1\n", "s.csv:2: start nan is not a finite number"),
    ("m.jsonl", '{"timestamp": NaN}\n', "m.jsonl:1: cannot read"),
])
def test_impossible_values_are_refused_in_one_line(tmp_path, name, text, expect):
    p = write(tmp_path, name, text)
    with pytest.raises(TraceError) as err:
        load(p, service=SVC)
    msg = str(err.value)
    assert expect in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ Azure layouts

def test_azure_functions_2019_original_layout_with_a_subset_of_minutes(tmp_path):
    d = tmp_path / "af2019"
    d.mkdir()
    (d / "invocations_per_function_md.anon.d01.csv").write_text(
        "HashOwner,HashApp,HashFunction,Trigger,600,601,602\n"
        "o1,a1,f1,http,1,0,2\n"
        "o1,a1,f2,timer,0,0,0\n"
        "o2,a2,f3,queue,120,0,0\n")
    (d / "function_durations_percentiles.anon.d01.csv").write_text(
        "HashOwner,HashApp,HashFunction,Average,Count\no1,a1,f1,250,3\n")
    traces = load(str(d), seed=1)
    assert [t.requests for t in traces] == [3, 0, 120]
    f1 = traces[0]
    assert f1.horizon == 180 and f1.arrivals[0][2] == 0.25 and 120 <= f1.arrivals[-1][0] < 180
    assert f1.day_offset() == 599 * 60                        # minute 600 keeps its time of day
    # a busy minute is batched per second: 120 calls -> 60 batches of 2
    busy = traces[2]
    assert len(busy.arrivals) == 60 and {n for _, n, _ in busy.arrivals} == {2} and busy.arrivals[0][2] == 1.0
    assert load(str(d / "invocations_per_function_md.anon.d01.csv"), limit=1)[0].requests == 3


def test_azure_functions_2021_per_invocation_layout(tmp_path):
    p = write(tmp_path, "AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt",
              "app,func,end_timestamp,duration\n"
              "a1,f1,10.5,0.5\na1,f2,20.0,2.0\na1,f1,100.0,1.0\n")
    traces = load(p)
    assert [t.name for t in traces] == ["f1", "f2"]
    assert traces[0].arrivals == [(10.0, 1, 0.5), (99.0, 1, 1.0)] and traces[1].arrivals == [(18.0, 1, 2.0)]
    assert traces[0].horizon == 100.0 and "own duration" in traces[0].notes[0]


def test_azure_llm_code_trace_is_labelled_code(tmp_path):
    p = write(tmp_path, "AzureLLMInferenceTrace_code.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2023-11-16 18:15:46.6805900,374,44\n")
    (tr,) = load(p, service=SVC)
    assert tr.source == "Azure LLM inference (code)"
