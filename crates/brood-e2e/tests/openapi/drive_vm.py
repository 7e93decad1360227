"""Drives a VM's life cycle through broodd with a client generated from
openapi/brood.json (by openapi-python-client), over broodd's unix socket.

Usage: drive_vm.py DOCUMENT SOCKET TOKEN NAME, with the generated package
`brood_client` on PYTHONPATH. The client raises on any status the document
does not declare and parses every body into the document's models; besides,
every response is validated against the schema the document declares for
its route and status, with undeclared fields refused, so a response that
differs from the contract fails here. Prints one line per step.
"""

import base64
import copy
import json
import re
import sys

import httpx
from openapi_schema_validator import OAS31Validator

from brood_client import AuthenticatedClient
from brood_client.api.host import show_host
from brood_client.api.ledger import ledger_log, verify_ledger
from brood_client.api.partitions import (
    define_partition,
    delete_partition,
    exec_in_partition,
    list_partitions,
    partition_console,
    pause_partition,
    resume_partition,
    show_partition,
    start_partition,
    stop_partition,
)
from brood_client.api.templates import (
    create_identity_pool,
    create_template,
    delete_identity_pool,
    delete_template,
    fork_template,
    list_templates,
    show_identity_pool,
    show_template,
)
from brood_client.models import (
    AuditLog,
    ConsoleLog,
    DefineRequest,
    DefineRequestConfigs,
    ErrorBody,
    ErrorCode,
    ExecRequest,
    ExecResponse,
    ChildStatus,
    ForkRequest,
    ForkRequestValues,
    ForkResponse,
    HostInfo,
    Partition,
    PartitionList,
    IdentityPool,
    IdentityPoolCreateRequest,
    IdentityPoolKind,
    RunState,
    Stage,
    StopRequest,
    Template,
    TemplateCreateRequest,
    TemplateList,
    VerifyReport,
)


def closed(schema):
    """The schema with every object that lists its properties closed to others."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


class Contract:
    """Checks each response against what the document declares for it."""

    def __init__(self, path):
        with open(path) as f:
            self.doc = json.load(f)
        self.components = closed(copy.deepcopy(self.doc["components"]))
        # Literal paths before templated ones, so /v1/ledger/log is not {name}.
        paths = sorted(self.doc["paths"].items(), key=lambda kv: "{" in kv[0])
        self.routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p, item) for p, item in paths
        ]
        self.checked = 0

    def check(self, response):
        response.read()
        method, path = response.request.method, response.request.url.path
        route = next(((p, item) for rx, p, item in self.routes if rx.match(path)), None)
        assert route, f"{method} {path} is no route of the document"
        op = route[1].get(method.lower())
        assert op, f"{method} {route[0]} is not in the document"
        status = str(response.status_code)
        declared = op["responses"].get(status)
        assert declared, f"{method} {route[0]} answered {status}, which it does not declare"
        content = declared.get("content")
        if not content:
            assert response.content == b"", f"{method} {path} {status}: a body where none is declared"
        else:
            media = content.get("application/json")
            assert media, f"{method} {path} {status}: declared as {list(content)}"
            ctype = response.headers.get("content-type", "")
            assert ctype.startswith("application/json"), f"{method} {path} {status}: {ctype}"
            schema = dict(closed(media["schema"]), components=self.components)
            OAS31Validator(schema).validate(response.json())
        self.checked += 1


CONTRACT = None


def client(sock, token):
    return AuthenticatedClient(
        base_url="http://broodd",
        token=token,
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(300.0),
        httpx_args={
            "transport": httpx.HTTPTransport(uds=sock),
            "event_hooks": {"response": [CONTRACT.check]},
        },
    )


def expect(resp, status, model):
    """The response has this status and parsed into this model."""
    assert resp.status_code == status, f"status {resp.status_code}, not {status}: {resp.content!r}"
    assert isinstance(resp.parsed, model), f"{type(resp.parsed).__name__}, not {model.__name__}"
    return resp.parsed


def step(what):
    print(what, flush=True)


def main():
    global CONTRACT
    document, sock, token, name = sys.argv[1:5]
    CONTRACT = Contract(document)
    c = client(sock, token)

    host = expect(show_host.sync_detailed(client=c), 200, HostInfo)
    assert host.accel in ("kvm", "tcg"), host.accel
    step(f"host {host.hostname} accel {host.accel}")

    # Refusals come back as the declared ErrorBody, with their codes.
    stranger = client(sock, "not-the-token")
    err = expect(list_partitions.sync_detailed(client=stranger), 401, ErrorBody)
    assert err.error.code == ErrorCode.UNAUTHORIZED, err
    err = expect(list_partitions.sync_detailed(client=c, limit=0), 400, ErrorBody)
    assert err.error.code == ErrorCode.BAD_REQUEST and "limit" in err.error.message, err
    err = expect(show_partition.sync_detailed("no-such-vm", client=c), 404, ErrorBody)
    assert err.error.code == ErrorCode.NOT_FOUND, err
    # What the extractors refuse before a handler runs: not JSON, too large.
    raw = c.get_httpx_client()
    resp = raw.post("/v1/partitions", content=b"name=x", headers={"content-type": "text/plain"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_media_type", resp.text
    resp = raw.post("/v1/identity-pools", content=b" " * (1 << 20) + b"{}", headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large", resp.text
    step("refusals: 401 400 404 413 415")

    pool = expect(
        create_identity_pool.sync_detailed(
            client=c,
            body=IdentityPoolCreateRequest(name=f"{name}-ids", kind=IdentityPoolKind.IDENTITY, values=["a", "b"]),
        ),
        201,
        IdentityPool,
    )
    assert (pool.size, pool.free) == (2, 2), pool
    pool = expect(show_identity_pool.sync_detailed(f"{name}-ids", client=c), 200, IdentityPool)
    assert [i.value for i in pool.items] == ["a", "b"], pool.items
    assert delete_identity_pool.sync_detailed(f"{name}-ids", client=c).status_code == 204
    expect(show_identity_pool.sync_detailed(f"{name}-ids", client=c), 404, ErrorBody)
    step("identity pool created, shown, deleted")

    configs = DefineRequestConfigs.from_dict({"default": {"memory_mib": 256, "vcpus": 1}})
    p = expect(
        define_partition.sync_detailed(client=c, body=DefineRequest(name=name, configs=configs)),
        201,
        Partition,
    )
    assert p.name == name and p.run_state == RunState.STOPPED, p
    err = expect(
        define_partition.sync_detailed(client=c, body=DefineRequest(name=name, configs=configs)),
        409,
        ErrorBody,
    )
    assert err.error.code == ErrorCode.CONFLICT, err
    err = expect(
        define_partition.sync_detailed(client=c, body=DefineRequest(name="Bad Name", configs=configs)),
        400,
        ErrorBody,
    )
    step(f"defined {p.name} {p.uuid}")

    p = expect(start_partition.sync_detailed(name, client=c), 200, Partition)
    assert p.run_state == RunState.RUNNING and p.pid, p
    step(f"started pid {p.pid}")

    r = expect(
        exec_in_partition.sync_detailed(
            name, client=c, body=ExecRequest(command="echo hello from $(uname -s); exit 3")
        ),
        200,
        ExecResponse,
    )
    out = base64.b64decode(r.stdout_base64).decode()
    assert (r.exit_code, out) == (3, "hello from Linux\n"), (r.exit_code, out)
    step(f"exec: {out.strip()} (exit {r.exit_code})")

    p = expect(pause_partition.sync_detailed(name, client=c), 200, Partition)
    assert p.run_state == RunState.PAUSED, p
    err = expect(pause_partition.sync_detailed(name, client=c), 409, ErrorBody)
    assert err.error.code == ErrorCode.INVALID_TRANSITION, err
    p = expect(resume_partition.sync_detailed(name, client=c), 200, Partition)
    assert p.run_state == RunState.RUNNING, p
    step("paused, refused a second pause, resumed")

    log = expect(partition_console.sync_detailed(name, client=c, bytes_=4096), 200, ConsoleLog)
    assert len(log.text.encode()) <= 4096 * 3, len(log.text)
    page = expect(list_partitions.sync_detailed(client=c, limit=1000), 200, PartitionList)
    assert [q.name for q in page.items] == [name], page.items

    p = expect(stop_partition.sync_detailed(name, client=c, body=StopRequest(timeout_s=60)), 200, Partition)
    assert p.run_state == RunState.STOPPED, p
    step("stopped")

    resp = delete_partition.sync_detailed(name, client=c)
    assert resp.status_code == 204, resp
    expect(show_partition.sync_detailed(name, client=c), 404, ErrorBody)
    step("deleted")

    audit = expect(ledger_log.sync_detailed(client=c, limit=5), 200, AuditLog)
    assert audit.items and all(isinstance(e.changes, list) for e in audit.items), audit
    assert all(e.changes and "op" in e.changes[0].additional_properties for e in audit.items), audit
    report = expect(verify_ledger.sync_detailed(client=c), 200, VerifyReport)
    assert report.ok, report.problems
    step(f"ledger: {len(audit.items)} entries, verify ok")
    fork_flow(c, f"{name}-tpl")
    step(f"{CONTRACT.checked} responses matched the document")
    print("done")


def fork_flow(c, name):
    """A template and a child forked from it, with an identity from a pool."""
    configs = DefineRequestConfigs.from_dict({"default": {"memory_mib": 256}})
    body = DefineRequest(name=name, configs=configs, start=True)
    p = expect(define_partition.sync_detailed(client=c, body=body), 201, Partition)
    assert p.run_state == RunState.RUNNING, p
    ids = IdentityPoolCreateRequest(name=f"{name}-ids", kind=IdentityPoolKind.IDENTITY, values=["dom-a"])
    expect(create_identity_pool.sync_detailed(client=c, body=ids), 201, IdentityPool)
    t = expect(
        create_template.sync_detailed(client=c, body=TemplateCreateRequest(vm=name, warm=0)),
        201,
        Template,
    )
    assert t.name == name and t.state_bytes > 0, t
    assert expect(show_partition.sync_detailed(name, client=c), 200, Partition).stage == Stage.TEMPLATE
    step(f"template {t.name}: {t.state_bytes} bytes of state")

    values = ForkRequestValues.from_dict({"role": "db"})
    req = ForkRequest(count=1, identity_pool=f"{name}-ids", values=values)
    children = expect(fork_template.sync_detailed(name, client=c, body=req), 201, ForkResponse).children
    assert len(children) == 1 and children[0].status == ChildStatus.READY, children
    child = children[0]
    assert child.identity == "dom-a", child
    r = expect(
        exec_in_partition.sync_detailed(
            child.name, client=c, body=ExecRequest(command="hostname; cat /etc/brood/identity")
        ),
        200,
        ExecResponse,
    )
    out = base64.b64decode(r.stdout_base64).decode().split()
    assert out == [child.name, "dom-a"], out
    # The pool has no identity left for a second child: refused whole.
    err = expect(fork_template.sync_detailed(name, client=c, body=req), 409, ErrorBody)
    assert err.error.code == ErrorCode.CAPACITY_EXCEEDED, err
    t = expect(show_template.sync_detailed(name, client=c), 200, Template)
    assert t.children == [child.name], t.children
    listed = expect(list_templates.sync_detailed(client=c), 200, TemplateList)
    assert [x.name for x in listed.items] == [name], listed.items
    step(f"forked {child.name} with identity {child.identity} in {child.ready_ms:.0f} ms")

    err = expect(delete_template.sync_detailed(name, client=c), 409, ErrorBody)
    assert delete_template.sync_detailed(name, client=c, cascade=True).status_code == 204
    expect(show_template.sync_detailed(name, client=c), 404, ErrorBody)
    expect(show_partition.sync_detailed(child.name, client=c), 404, ErrorBody)
    assert delete_identity_pool.sync_detailed(f"{name}-ids", client=c).status_code == 204
    step("template deleted with its child")


if __name__ == "__main__":
    main()
