"""The emulator of ../shared/aws/moto_sfn_server.py, plus SageMaker jobs that really run their container.

Stock moto marks every job Completed at creation and runs nothing, so a state machine whose jobs must
publish cache entries (docs/cloud.md) cannot succeed there. Here a job whose image is `local:<path>` runs
<path> the way SageMaker runs a container: the entrypoint (`wf worker <kind>`, with <path> standing for
`wf`) and the container arguments, with `WF_SM_ROOT` laid out like /opt/ml:

- Processing: the job runs ProcessingResources.ClusterConfig.InstanceCount (N) worker processes at
  once, each with its own /opt/ml tree and `config/resourceconfig.json` (hosts algo-1..algo-N,
  current_host its own). Each ProcessingInput's S3Uri (prefix or object) is downloaded to its
  LocalPath: whole for every instance (FullyReplicated), or, for ShardedByS3Key with N > 1, each
  object to exactly one instance (the input's keys sorted, dealt round-robin) as SageMaker does. The
  job fails when any instance fails.
- Training: each channel is downloaded to `input/data/<channel>/`; an FSx channel is read from the file
  system's ImportPath (what Lustre would lazily load), joined with the part of DirectoryPath after the
  mount name. `input/config/resourceconfig.json` lists ResourceConfig.InstanceCount hosts and the job
  runs the first one (the one that publishes).
- The job is InProgress while the worker runs (in a thread, so the .sync poll sees it), then Completed,
  or Failed with the worker's last stderr lines as FailureReason.

Jobs with any other image behave as in stock moto. Also fixed here: States.Format with escaped braces
(see below). Everything stays on 127.0.0.1 (the worker talks to
this server through AWS_ENDPOINT_URL).

Usage: MOTO_LAUNCHER=tests/cloud/moto_jobs.py moto_start   (WF_MOTO_SFN_SERVER overrides the base path)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

_here = os.path.dirname(os.path.abspath(__file__))
_base = os.environ.get("WF_MOTO_SFN_SERVER") or os.path.normpath(
    os.path.join(_here, "..", "..", "..", "shared", "aws", "moto_sfn_server.py"))
sys.path.insert(0, os.path.dirname(_base))
import moto_sfn_server  # noqa: E402,F401  (applies the SFN/SageMaker/FSx patches)

import boto3  # noqa: E402
from moto.fsx import models as fsx_models  # noqa: E402
from moto.sagemaker import models as sm_models  # noqa: E402

_LOCK = threading.Lock()


def _endpoint():
    return "http://127.0.0.1:%s" % os.environ["MOTO_PORT"]


def _s3():
    return boto3.client("s3", endpoint_url=_endpoint(), region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _download(uri, dest):
    """Downloads s3://bucket/prefix (every object below it, or the one object) into dest/."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    s3 = _s3()
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for key in keys:
        rel = key[len(prefix):].lstrip("/") if key != prefix else os.path.basename(key)
        if not rel:
            continue
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path)
    os.makedirs(dest, exist_ok=True)


def _local(root, path):
    return os.path.join(root, os.path.relpath(path, "/opt/ml")) if path.startswith("/opt/ml") else \
        os.path.join(root, path.lstrip("/"))


def _run(image, entrypoint, arguments, root):
    exe = image[len("local:"):]
    cmd = [exe] + list(entrypoint or ["wf"])[1:] + list(arguments or [])
    env = dict(os.environ, WF_SM_ROOT=root, AWS_ENDPOINT_URL=_endpoint(), AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", WF_PLAIN="1")
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    except Exception as e:  # noqa: BLE001
        return False, "cannot run %s: %s" % (cmd, e)
    sys.stderr.write("[moto_jobs] %s -> %d\n%s\n" % (" ".join(cmd), p.returncode, p.stderr[-4000:]))
    return p.returncode == 0, "exit %d: %s" % (p.returncode, p.stderr.strip()[-900:])


def _keys(uri):
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    keys = []
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def _processing(job):
    n = max(1, int(((getattr(job, "wf_resources", None) or {}).get("ClusterConfig") or {})
                   .get("InstanceCount", 1)))
    hosts = ["algo-%d" % (h + 1) for h in range(n)]
    roots = [tempfile.mkdtemp(prefix="wf-sm-") for _ in hosts]
    try:
        for i in job.processing_inputs or []:
            s3 = i.get("S3Input")
            if not s3:
                continue
            if s3.get("S3DataDistributionType") == "ShardedByS3Key" and n > 1:
                # SageMaker gives each object to exactly one instance; here: sorted keys, round-robin.
                uri = s3["S3Uri"]
                bucket, _, prefix = uri[len("s3://"):].partition("/")
                for k, key in enumerate(_keys(uri)):
                    rel = key[len(prefix):].lstrip("/") or os.path.basename(key)
                    path = os.path.join(_local(roots[k % n], s3["LocalPath"]), rel)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _s3().download_file(bucket, key, path)
                for root in roots:
                    os.makedirs(_local(root, s3["LocalPath"]), exist_ok=True)
            else:
                for root in roots:
                    _download(s3["S3Uri"], _local(root, s3["LocalPath"]))
        spec = job.app_specification
        results = [None] * n

        def host(h):
            os.makedirs(os.path.join(roots[h], "config"), exist_ok=True)
            with open(os.path.join(roots[h], "config", "resourceconfig.json"), "w") as f:
                json.dump({"current_host": hosts[h], "hosts": hosts}, f)
            results[h] = _run(spec["ImageUri"], spec.get("ContainerEntrypoint"), spec.get("ContainerArguments"),
                              roots[h])

        threads = [threading.Thread(target=host, args=(h,)) for h in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [(hosts[h], r[1]) for h, r in enumerate(results) if not (r and r[0])]
        ok, why = (True, "") if not failed else (False, "; ".join("%s: %s" % f for f in failed)[-1000:])
    except Exception as e:  # noqa: BLE001
        ok, why = False, "staging the job failed: %r" % (e,)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    job.processing_job_status = "Completed" if ok else "Failed"
    if not ok:
        job.failure_reason = why


def _fsx_import_path(account, region, fs_id):
    fs = fsx_models.fsx_backends[account][region].file_systems[fs_id]
    lustre = fs.to_dict().get("LustreConfiguration", {})
    return (lustre.get("DataRepositoryConfiguration") or {}).get("ImportPath") or lustre.get("ImportPath")


def _training(job, account, region):
    root = tempfile.mkdtemp(prefix="wf-sm-")
    try:
        for ch in job.input_data_config or []:
            dest = os.path.join(root, "input", "data", ch["ChannelName"])
            src = ch.get("DataSource", {})
            if "S3DataSource" in src:
                _download(src["S3DataSource"]["S3Uri"], dest)
            elif "FileSystemDataSource" in src:
                fsd = src["FileSystemDataSource"]
                base = _fsx_import_path(account, region, fsd["FileSystemId"])
                rest = fsd.get("DirectoryPath", "/").strip("/").split("/", 1)[1:]  # after the mount name
                _download(base.rstrip("/") + ("/" + rest[0] if rest else "") + "/", dest)
        n = int((job.resource_config or {}).get("InstanceCount", 1))
        os.makedirs(os.path.join(root, "input", "config"), exist_ok=True)
        with open(os.path.join(root, "input", "config", "resourceconfig.json"), "w") as f:
            json.dump({"current_host": "algo-1", "hosts": ["algo-%d" % (i + 1) for i in range(n)]}, f)
        spec = job.algorithm_specification
        ok, why = _run(spec["TrainingImage"], spec.get("ContainerEntrypoint"), spec.get("ContainerArguments"),
                       root)
    except Exception as e:  # noqa: BLE001
        ok, why = False, "staging the job failed: %r" % (e,)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    job.training_job_status = "Completed" if ok else "Failed"
    if hasattr(job, "secondary_status"):
        job.secondary_status = job.training_job_status
    if not ok:
        job.failure_reason = why


_orig_processing = sm_models.SageMakerModelBackend.create_processing_job

# moto drops ProcessingResources; the response handler passes them to the backend call below.
from moto.sagemaker import responses as sm_responses  # noqa: E402

_PENDING = threading.local()
_orig_response = sm_responses.SageMakerResponse.create_processing_job


def _create_processing_response(self, *a, **kw):
    _PENDING.resources = self._get_param("ProcessingResources")
    try:
        return _orig_response(self, *a, **kw)
    finally:
        _PENDING.resources = None


sm_responses.SageMakerResponse.create_processing_job = _create_processing_response
_orig_training = sm_models.SageMakerModelBackend.create_training_job


def _create_processing_job(self, *a, **kw):
    job = _orig_processing(self, *a, **kw)
    job.wf_resources = getattr(_PENDING, "resources", None)
    if job.processing_job_status != "Failed" and \
            str((job.app_specification or {}).get("ImageUri", "")).startswith("local:"):
        job.processing_job_status = "InProgress"
        threading.Thread(target=_processing, args=(job,), daemon=True).start()
    return job


def _create_training_job(self, *a, **kw):
    job = _orig_training(self, *a, **kw)
    if job.training_job_status != "Failed" and \
            str((job.algorithm_specification or {}).get("TrainingImage", "")).startswith("local:"):
        job.training_job_status = "InProgress"
        threading.Thread(target=_training, args=(job, self.account_id, self.region_name), daemon=True).start()
    return job


# States.Format: moto runs Python's str.format on the template, so escaped braces (`\{`, `\}`, as AWS
# documents for literal braces, e.g. JSON params inside a key string) raise KeyError. AWS semantics:
# `\X` is the literal X, `{}` the next argument.
from moto.stepfunctions.parser.asl.component.intrinsic.function.statesfunction.generic import \
    string_format as _sf  # noqa: E402


from moto.stepfunctions.parser.asl.component.intrinsic.argument import argument as _arg  # noqa: E402


def _json_level(text):
    """moto's ASL lexer leaves JSON's `\\\\` (one backslash) doubled inside string values."""
    return text.replace("\\\\", "\\")


def _unescape(text):
    text = _json_level(text)
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# String literals of intrinsic functions: moto keeps the escaping backslashes (`\{` stays `\{` in a
# States.Array argument, and JSON's escaped backslash stays two); AWS passes the literal character.
def _literal_eval(self, env):
    v = self.definition_value
    return _unescape(v) if isinstance(v, str) else v


_arg.ArgumentLiteral._eval_argument = _literal_eval


def _format_eval_body(self, env):
    self.argument_list.eval(env=env)
    args = env.stack.pop()
    first = self.argument_list.arguments[0]
    # The template with its escapes, to tell a literal `\{\}` from a `{}` placeholder.
    template = _json_level(first.definition_value) if isinstance(first, _arg.ArgumentLiteral) else args[0]
    values = [self._to_str_repr(v) for v in args[1:]]
    out, i, n = [], 0, 0
    while i < len(template):
        c = template[i]
        if c == "\\" and i + 1 < len(template):
            out.append(template[i + 1])
            i += 2
        elif template.startswith("{}", i):
            out.append(values[n] if n < len(values) else "")
            n += 1
            i += 2
        else:
            out.append(c)
            i += 1
    env.stack.append("".join(out))


_sf.StringFormat._eval_body = _format_eval_body

# aws-sdk:s3:getObject: moto hands the state boto's streaming Body; AWS returns the body as a string
# (what `States.StringToJson($.Body)` reads).
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import \
    state_task_service_aws_sdk as _sdk  # noqa: E402

_orig_sdk_eval = _sdk.StateTaskServiceAwsSdk._eval_service_task


def _sdk_eval(self, env, *a, **kw):
    _orig_sdk_eval(self, env, *a, **kw)
    out = env.stack[-1] if env.stack else None
    if isinstance(out, dict) and hasattr(out.get("Body"), "read"):
        out["Body"] = out["Body"].read().decode("utf-8", "replace")


_sdk.StateTaskServiceAwsSdk._eval_service_task = _sdk_eval

sm_models.SageMakerModelBackend.create_processing_job = _create_processing_job
sm_models.SageMakerModelBackend.create_training_job = _create_training_job

if __name__ == "__main__":
    from moto.server import main
    main(sys.argv[1:])
