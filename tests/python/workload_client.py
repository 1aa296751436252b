#!/usr/bin/env python3
"""SPIFFE Workload API clients this project did not write, run against the
agent's socket by tests/e2e/python_clients.rs.

    workload_client.py pyspiffe [--as-uid N --as-gid N]
    workload_client.py raw --proto DIR --scratch DIR

The socket comes from SPIFFE_ENDPOINT_SOCKET (unix:/path). Prints one JSON
object (the results) on stdout; the Rust test asserts on it. Exit 3 means a
package is missing (the message says what to install).

`pyspiffe` drives py-spiffe (grpcio, gRPC C-core underneath) through
FetchX509SVID, FetchX509Bundles, FetchJWTSVID, FetchJWTBundles and
ValidateJWTSVID. With --as-uid/--as-gid it first drops to that uid/gid (after
its imports, since this interpreter may live where that uid cannot read) and
reports how the calls were answered.

`raw` generates grpcio stubs from proto/spiffe/workload.proto into --scratch
and calls the API over channels with grpcio's default :authority for a
unix: target (1.85: the path without its leading slash, percent-encoded),
the bare socket path, the percent-encoded path, and `localhost`.
"""

import argparse
import json
import os
import sys

INSTALL = "pip install spiffe==0.3.2 grpcio==1.85.3 grpcio-tools==1.85.1"



def require(modules):
    """Imports `modules`, or exits 3 saying what to install."""
    try:
        for module in modules:
            __import__(module)
    except ImportError as e:
        print(f"missing Python package ({e}); install with: {INSTALL}", file=sys.stderr)
        sys.exit(3)


require(["grpc"])
import grpc  # noqa: E402

AUDIENCE = "billing"
TRUST_DOMAIN = "dev.example.org"


def socket_path():
    endpoint = os.environ["SPIFFE_ENDPOINT_SOCKET"]
    return endpoint[len("unix:"):] if endpoint.startswith("unix:") else endpoint


def describe(err):
    """An exception as JSON-friendly text, with the gRPC status when known."""
    cause = err
    while cause is not None and not isinstance(cause, grpc.Call):
        cause = cause.__cause__
    if cause is not None:
        return {"code": cause.code().name, "details": cause.details()}
    return {"code": None, "details": str(err)}


def import_pyspiffe():
    """py-spiffe and everything it loads lazily. Not imported by `raw`:
    py-spiffe registers the same (package-less) proto symbols as the
    generated stubs."""
    require(["spiffe", "cryptography"])
    global serialization, JwtSvid, TrustDomain, WorkloadApiClient
    from cryptography.hazmat.primitives import serialization
    from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
    # grpc imports these on first use; load them while we still can read
    # this interpreter's files (see run_as).
    import grpc._channel  # noqa: F401
    import grpc._interceptor  # noqa: F401


def run_pyspiffe():
    results = {"grpc_version": grpc.__version__}
    td = TrustDomain(TRUST_DOMAIN)
    with WorkloadApiClient() as client:
        # FetchX509SVID: the SVID chains to the bundle it came with, and to
        # the one FetchX509Bundles serves.
        svid = client.fetch_x509_svid(timeout=20)
        results["x509_spiffe_id"] = str(svid.spiffe_id)
        bundles = client.fetch_x509_bundles(timeout=20)
        bundle = bundles.get_bundle_for_trust_domain(td)
        results["x509_bundle_authorities"] = len(bundle.x509_authorities)
        verified = False
        for ca in bundle.x509_authorities:
            try:
                svid.leaf.verify_directly_issued_by(ca)
                verified = True
            except Exception:
                pass
        results["x509_chain_verified"] = verified
        # The private key belongs to the certificate.
        leaf_pub = svid.leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        key_pub = svid.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        results["x509_key_matches"] = leaf_pub == key_pub

        # FetchJWTSVID, checked locally against FetchJWTBundles, then by
        # the agent with ValidateJWTSVID.
        jwt = client.fetch_jwt_svid(audience={AUDIENCE}, timeout=20)
        results["jwt_spiffe_id"] = str(jwt.spiffe_id)
        jwt_bundles = client.fetch_jwt_bundles(timeout=20)
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
        results["jwt_bundle_keys"] = len(jwt_bundle.jwt_authorities)
        local = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {AUDIENCE})
        results["jwt_locally_validated"] = str(local.spiffe_id)
        remote = client.validate_jwt_svid(jwt.token, AUDIENCE, timeout=20)
        results["jwt_validated"] = str(remote.spiffe_id)
        try:
            client.validate_jwt_svid(jwt.token, "ledger", timeout=20)
            results["jwt_wrong_audience"] = "accepted"
        except Exception as e:
            results["jwt_wrong_audience"] = describe(e)
    return results


def run_as(uid, gid):
    """Drops to uid/gid, then reports how each call is answered."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    results = {"uid": os.getuid(), "gid": os.getgid()}
    with WorkloadApiClient() as client:
        for name, call in [
            ("x509", lambda: client.fetch_x509_svid(timeout=20)),
            ("x509_bundles", lambda: client.fetch_x509_bundles(timeout=20)),
            ("jwt", lambda: client.fetch_jwt_svid(audience={AUDIENCE}, timeout=20)),
            ("jwt_bundles", lambda: client.fetch_jwt_bundles(timeout=20)),
        ]:
            try:
                call()
                results[name] = {"code": "OK"}
            except Exception as e:
                results[name] = describe(e)
    return results


def generate_stubs(proto_dir, scratch):
    from grpc_tools import protoc
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out = os.path.join(scratch, "stubs")
    os.makedirs(out, exist_ok=True)
    code = protoc.main([
        "protoc",
        # Top-level modules: a `spiffe` package would shadow py-spiffe's.
        f"-I{os.path.join(proto_dir, 'spiffe')}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_dir, "spiffe", "workload.proto"),
    ])
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with {code}")
    sys.path.insert(0, out)
    import workload_pb2
    import workload_pb2_grpc

    return workload_pb2, workload_pb2_grpc


def run_raw(proto_dir, scratch):
    require(["grpc_tools"])
    pb2, pb2_grpc = generate_stubs(proto_dir, scratch)
    path = socket_path()
    metadata = [("workload.spiffe.io", "true")]
    cases = {
        # No option: grpcio picks (1.85: "tmp%2Fdir%2Fagent.sock").
        "default": [],
        "bare_path": [("grpc.default_authority", path)],
        "percent_encoded_path": [("grpc.default_authority", path.replace("/", "%2F"))],
        "localhost": [("grpc.default_authority", "localhost")],
    }
    results = {}
    for name, options in cases.items():
        with grpc.insecure_channel(f"unix:{path}", options=options) as channel:
            stub = pb2_grpc.SpiffeWorkloadAPIStub(channel)
            try:
                stream = stub.FetchX509SVID(pb2.X509SVIDRequest(), metadata=metadata, timeout=20)
                first = next(stream)
                stream.cancel()
                jwt = stub.FetchJWTSVID(
                    pb2.JWTSVIDRequest(audience=[AUDIENCE]), metadata=metadata, timeout=20)
                results[name] = {
                    "code": "OK",
                    "x509_spiffe_id": first.svids[0].spiffe_id,
                    "jwt_spiffe_id": jwt.svids[0].spiffe_id,
                }
            except Exception as e:
                results[name] = describe(e)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pyspiffe", "raw"])
    parser.add_argument("--as-uid", type=int)
    parser.add_argument("--as-gid", type=int)
    parser.add_argument("--proto")
    parser.add_argument("--scratch")
    args = parser.parse_args()
    if args.mode == "raw":
        results = run_raw(args.proto, args.scratch)
    elif args.as_uid is not None:
        import_pyspiffe()
        results = run_as(args.as_uid, args.as_gid if args.as_gid is not None else args.as_uid)
    else:
        import_pyspiffe()
        try:
            results = run_pyspiffe()
        except Exception as e:
            results = {"error": describe(e)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
