"""Log-shipper wrappers: CRI, docker json-file, Fluent Bit (object, merged, array), OTel raw;
metadata only fills empty fields, on the side the reporter names."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.decoders.envoy import decode_json, decode_text
from detector.decoders.linkerd import decode as decode_linkerd
from detector.decoders.wrappers import apply_metadata, unwrap, wrap_decoder
from detector.errors import DecodeError
from detector.records import FlowRecord


@pytest.fixture(scope="module")
def task_lines(fixtures_dir: Path) -> tuple[bytes, bytes]:
    client, server = (
        (fixtures_dir / "envoy-istio" / "istio-io_access-log-task_TEXT.log")
        .read_bytes()
        .splitlines()
    )
    return client, server


K8S = {
    "namespace_name": "foo",
    "pod_name": "httpbin-74fb669cc6-x7k2p",
    "container_name": "istio-proxy",
    "labels": {"app": "httpbin", "version": "v1"},
}


def test_unwrapped_data_is_returned_untouched(task_lines: tuple[bytes, bytes]) -> None:
    for data in (task_lines[0], b'{"start_time": "2024-01-01T00:00:00Z"}', b"", b"\x00\xff"):
        inner, meta = unwrap(data)
        assert inner is data and meta is None


def test_cri(task_lines: tuple[bytes, bytes]) -> None:
    client, _ = task_lines
    inner, meta = unwrap(b"2024-01-02T03:04:05.123456789Z stdout F " + client + b"\n")
    assert inner == client
    assert meta == {
        "time": "2024-01-02T03:04:05.123456789Z",
        "stream": "stdout",
        "reporter": "source",
    }
    inner, meta = unwrap(b"2024-01-02T03:04:05Z stderr P " + client[:40])
    assert inner == client[:40] and meta is not None and meta["partial"] == "true"
    with pytest.raises(DecodeError) as exc:
        wrap_decoder(decode_text)(b"2024-01-02T03:04:05Z stdout P " + client[:40])
    assert exc.value.reason == "partial_line"


def test_docker_json_file(task_lines: tuple[bytes, bytes]) -> None:
    _, server = task_lines
    doc = {
        "log": server.decode() + "\n",
        "stream": "stdout",
        "time": "2024-01-02T03:04:05.1Z",
        "attrs": {"io.kubernetes.pod.namespace": "foo", "io.kubernetes.pod.name": "httpbin-0"},
    }
    inner, meta = unwrap(orjson.dumps(doc))
    assert inner == server
    assert meta is not None
    assert (meta["namespace"], meta["pod"], meta["stream"], meta["reporter"]) == (
        "foo",
        "httpbin-0",
        "stdout",
        "destination",
    )
    # {"log": ...} without the runtime's keys is an app's own JSON, not a wrapper.
    plain = b'{"log": "hello"}'
    assert unwrap(plain) == (plain, None)


def test_fluent_bit_forms(task_lines: tuple[bytes, bytes]) -> None:
    _, server = task_lines
    rec = {"log": server.decode(), "stream": "stdout", "kubernetes": K8S, "cluster": "east"}
    expected = {
        "namespace": "foo",
        "pod": "httpbin-74fb669cc6-x7k2p",
        "container": "istio-proxy",
        "workload": "httpbin",
        "cluster": "east",
        "stream": "stdout",
        "reporter": "destination",
    }
    for data in (
        orjson.dumps(rec),
        orjson.dumps([1700000000.5, rec]),
        orjson.dumps(["kube.var.log", 1700000000, rec]),
        orjson.dumps([[1700000000.5, {}], rec]),
    ):
        inner, meta = unwrap(data)
        assert inner == server
        assert meta == expected


def test_fluent_bit_merged_payload() -> None:
    payload = {"start_time": "2024-05-01T12:00:00Z", "upstream_cluster": "outbound|80||a.b.svc"}
    inner, meta = unwrap(orjson.dumps({**payload, "kubernetes": K8S, "stream": "stdout"}))
    assert orjson.loads(inner) == payload
    assert meta is not None and meta["reporter"] == "source"


def test_workload_from_pod_name_without_labels() -> None:
    k8s = {"namespace_name": "shop", "pod_name": "cart-5d8f7b9c6d-xk2vb"}
    _, meta = unwrap(orjson.dumps({"log": "x", "kubernetes": k8s}))
    assert meta is not None and meta["workload"] == "cart"


def test_otel_raw(task_lines: tuple[bytes, bytes]) -> None:
    client, _ = task_lines
    inner, meta = unwrap(orjson.dumps(client.decode()))
    assert inner == client and meta == {"reporter": "source"}
    # Nested: OTel raw around a CRI line.
    cri = "2024-01-02T03:04:05Z stdout F " + client.decode()
    inner, meta = unwrap(orjson.dumps(cri))
    assert inner == client and meta is not None and meta["stream"] == "stdout"


def test_wrap_decoder_fills_only_empty_fields(task_lines: tuple[bytes, bytes]) -> None:
    client, server = task_lines
    dec = wrap_decoder(decode_text)
    k8s_client = dict(K8S, namespace_name="bar", pod_name="sleep-6f8cd9c7d4-x7k2p", labels={})
    (out,) = dec(orjson.dumps({"log": client.decode(), "kubernetes": k8s_client}), "s", 3)
    # Outbound line: the emitting pod is the caller.
    assert (out.src_namespace, out.src_workload) == ("bar", "sleep")
    assert (out.dst_namespace, out.dst_service) == ("foo", "httpbin")  # from the line, kept
    assert (out.source, out.offset) == ("s", 3)
    k8s_server = dict(K8S, namespace_name="other")
    (inb,) = dec(orjson.dumps({"log": server.decode(), "kubernetes": k8s_server, "cluster": "c1"}))
    # Inbound line: the emitting pod is the callee; the line already named namespace foo.
    assert inb.dst_namespace == "foo" and inb.dst_cluster == "c1"
    assert inb.src_namespace is None and inb.src_cluster is None
    # Unwrapped input goes straight through.
    assert dec(client) == decode_text(client)


def test_linkerd_is_destination_and_json_wrappers(fixtures_dir: Path) -> None:
    line = (
        (fixtures_dir / "linkerd" / "linkerd-docs_access-log.json.log").read_bytes().split(b"\n")[0]
    )
    dec = wrap_decoder(decode_linkerd)
    (r,) = dec(orjson.dumps({"log": line.decode(), "kubernetes": {"namespace_name": "booksapp"}}))
    assert r.dst_namespace == "booksapp" and r.src_namespace == "booksapp"
    assert r.src_principal == "traffic.booksapp.serviceaccount.identity.linkerd.cluster.local"
    json_dec = wrap_decoder(decode_json)
    obj = {
        "start_time": "2024-05-01T12:00:00Z",
        "upstream_cluster": "outbound|80||a.b.svc.cluster.local",
        "method": "GET",
        "protocol": "HTTP/1.1",
    }
    (j,) = json_dec(orjson.dumps({"log": orjson.dumps(obj).decode(), "stream": "stdout"}))
    assert (j.dst_service, j.dst_namespace) == ("a", "b")


def test_apply_metadata_without_reporter_fills_nothing() -> None:
    rec = FlowRecord(1.0)
    assert apply_metadata([rec], {"namespace": "x", "workload": "y"}) == [rec]
    assert apply_metadata([rec], None) == [rec]
    (src,) = apply_metadata([rec], {"namespace": "x", "reporter": "source"})
    assert src.src_namespace == "x" and src.dst_namespace is None
