"""The AWS emulator the cloud tests run against: moto 5.2.5 on 127.0.0.1, completed where wf needs it.

Run it through tests/cloud/emulator.sh, which installs the pinned requirements
(tests/cloud/requirements.txt) into a virtual environment and waits until the server answers.
Directly:

    python emulator.py [--port N] [--port-file PATH] [--exit-with-stdin]

It listens on 127.0.0.1 only (port 0, the default, picks a free one; --port-file receives the port
once the socket is bound). With --exit-with-stdin it exits as soon as its standard input reaches
end of file, so a parent that holds the other end of a pipe takes the emulator (and the jobs it
runs) with it however the parent ends.

What stock moto 5.2.5 lacks for wf, and what this file does about each gap:

1. Step Functions executions. moto accepts state machines but runs nothing unless its ASL
   interpreter is switched on; it is switched on here (`enable_state_machine_execution`).
2. SageMaker `.sync`. moto forwards `arn:aws:states:::sagemaker:*` tasks as plain request/response
   calls; `.sync` ends in States.Runtime "Unsupported .sync callback procedure". wf's state
   machines wait for their jobs with createTrainingJob.sync / createProcessingJob.sync (and the
   same holds for createTransformJob.sync). Here the create call is followed by Describe* polls
   until the job ends; the task's output is the last Describe output, as on AWS, and a job that
   ends Failed or Stopped fails the task with States.TaskFailed and that output as the cause
   (`SageMakerSync`).
3. Failing jobs. moto creates every job Completed. A job whose name starts with `fail-` is created
   Failed instead, so Catch and Retry paths can be exercised (`make_fail_jobs_fail`).
4. Jobs that run. moto runs no container, so nothing a job should publish ever appears. A job
   whose image is `local:<path>` runs <path> the way SageMaker runs a container: the entrypoint
   with <path> in place of its first word, then the container arguments, with WF_SM_ROOT standing
   for /opt/ml. Processing jobs run one process per instance (ProcessingResources'
   InstanceCount), each with its own tree and config/resourceconfig.json; inputs are copied from
   S3 whole to every instance, or with ShardedByS3Key each object to one instance (keys sorted,
   dealt round-robin). Training jobs get their channels under input/data/<channel>/ (an FSx
   channel is read from the file system's ImportPath, which Lustre would load lazily) and
   input/config/resourceconfig.json; the first host runs. The job is InProgress while its
   processes run, then Completed, or Failed with the end of their stderr as FailureReason.
   moto also drops ProcessingResources; it is kept and returned by DescribeProcessingJob, as AWS
   does. Jobs with any other image behave as in stock moto (`run_local_jobs`).
5. FSx. moto's file systems have no Lifecycle and echo LustreConfiguration as sent; here they are
   AVAILABLE and ImportPath/ExportPath/ImportedFileChunkSize are reported under
   DataRepositoryConfiguration, as AWS reports them. Data repository tasks are not implemented
   in moto (HTTP 500); here they are created SUCCEEDED and can be described (`complete_fsx`).
6. Escapes in intrinsic functions. moto keeps the escaping backslash of string literals (`\\{`
   stays `\\{`, JSON's `\\\\` stays two backslashes) and formats States.Format templates with
   Python's str.format, so a template holding literal braces raises. AWS semantics are applied
   here: `\\X` is the character X, `{}` the next argument (`fix_intrinsic_escapes`).
7. aws-sdk:s3:getObject. moto hands the state machine the streaming body object; AWS returns the
   body as a string, which is what `States.StringToJson($.Body)` reads (`read_sdk_bodies`).

8. Error names of SDK integrations. moto names an aws-sdk task's error after the service as the
   resource ARN spells it (`s3.NoSuchKeyException`); AWS capitalizes the service
   (`S3.NoSuchKeyException`), and a Catch or Retry matches names exactly. The AWS names of the
   services wf calls are added here (`name_sdk_errors`).

9. Who a task calls AWS as. moto's interpreter signs every SDK call of a task with a fixed dummy
   key, so with IAM enforcement on (POST /moto-api/reset-auth) every call fails as an unknown key.
   AWS calls as the state machine's role: here the interpreter assumes the execution's RoleArn
   through moto's STS and signs with those credentials, so the role's policies decide
   (`run_tasks_as_the_role`).
10. Managed spot training and checkpoints. moto keeps neither CheckpointConfig nor spot. A
   Training job run here (4.) gets CheckpointConfig as SageMaker does it: S3Uri copied into
   LocalPath before the container starts, LocalPath copied back to S3Uri when it ends. A spot
   job (EnableManagedSpotTraining) tagged `wf-emulator:interrupt` = `after-first-checkpoint`
   is interrupted as spot capacity is reclaimed: its process is killed as soon as a complete
   checkpoint (a `checkpoint.json`) appears under LocalPath, the checkpoints are copied to S3,
   and the job starts again on a fresh instance tree with them restored, once
   (`run_training_job`).

11. Job logs. SageMaker writes what a job's container prints to CloudWatch Logs, group
   `/aws/sagemaker/ProcessingJobs` or `/aws/sagemaker/TrainingJobs`, one stream per instance
   named `<job name>/<host>-<timestamp>`. moto runs no container; the jobs run here (4.) put their
   standard error there when they end (`write_job_log`).

The state machine interpreter calls back into this server at http://localhost:$MOTO_PORT; the
port is set once the socket is bound. Jobs reach it through AWS_ENDPOINT_URL on 127.0.0.1.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

LOOPBACK = "127.0.0.1"
JOB_TIMEOUT_SECONDS = 1200


def log(message):
    sys.stderr.write("[emulator] %s\n" % message)
    sys.stderr.flush()


def endpoint():
    """This server's URL (MOTO_PORT is set by `serve` before the first request)."""
    return "http://%s:%s" % (LOOPBACK, os.environ["MOTO_PORT"])


def aws_env():
    """What a process needs to talk to this emulator rather than to AWS."""
    return {
        "AWS_ENDPOINT_URL": endpoint(),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# ---------------------------------------------------------------------------------------------
# 1. Step Functions executions
# ---------------------------------------------------------------------------------------------

def enable_state_machine_execution():
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}


# ---------------------------------------------------------------------------------------------
# 2. SageMaker .sync
# ---------------------------------------------------------------------------------------------

# create action -> (describe action, name parameter, status field)
SYNC_JOBS = {
    "create_training_job": ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    "create_processing_job": ("describe_processing_job", "ProcessingJobName", "ProcessingJobStatus"),
    "create_transform_job": ("describe_transform_job", "TransformJobName", "TransformJobStatus"),
}
RUNNING_STATUSES = ("InProgress", "Stopping")


def add_sagemaker_sync():
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent, FailureEventException)
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName)
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType)
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import (
        ResourceCondition)
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_unsupported import (  # noqa: E501
        StateTaskServiceUnsupported)
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
    from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for

    class SageMakerSync(StateTaskServiceUnsupported):
        """SageMaker tasks as moto forwards them, plus `.sync` for the job-creating actions."""

        def __init__(self):
            super().__init__()
            self._supported_integration_patterns = {
                ResourceCondition.WaitForTaskToken, ResourceCondition.Sync}

        def _task_failed(self, env, describe_output):
            error = StatesErrorNameType.StatesTaskFailed
            return FailureEventException(FailureEvent(
                env=env,
                error_name=StatesErrorName(typ=error),
                event_type=HistoryEventType.TaskFailed,
                event_details=EventDetails(taskFailedEventDetails=TaskFailedEventDetails(
                    resource=self._get_sfn_resource(),
                    resourceType=self._get_sfn_resource_type(),
                    error=error.to_name(),
                    cause=json.dumps(describe_output, default=str)))))

        def _build_sync_resolver(self, env, resource_runtime_part, normalised_parameters,
                                 state_credentials):
            action = self._get_boto_service_action()
            if action not in SYNC_JOBS:
                return super()._build_sync_resolver(
                    env, resource_runtime_part, normalised_parameters, state_credentials)
            describe, name_parameter, status_field = SYNC_JOBS[action]
            # The create call's output is replaced by the final Describe output.
            env.stack.pop()
            sagemaker = boto_client_for(region=resource_runtime_part.region, service="sagemaker",
                                        state_credentials=state_credentials)
            job_name = normalised_parameters[name_parameter]

            def poll():
                output = getattr(sagemaker, describe)(**{name_parameter: job_name})
                output.pop("ResponseMetadata", None)
                status = output[status_field]
                if status in RUNNING_STATUSES:
                    return None  # asked again after a short delay
                if status == "Completed":
                    return json.loads(json.dumps(output, default=str))
                raise self._task_failed(env, output)

            return poll

    stock = state_task_factory.state_task_service_for

    def service_for(service_name):
        return SageMakerSync() if service_name == "sagemaker" else stock(service_name)

    state_task_factory.state_task_service_for = service_for


# ---------------------------------------------------------------------------------------------
# 3. Jobs named fail-... end Failed
# ---------------------------------------------------------------------------------------------

FAIL_PREFIX = "fail-"


def make_fail_jobs_fail():
    from moto.sagemaker import models

    def fail_when_named(cls, name_field, status_field):
        stock_init = cls.__init__

        def init(self, *args, **kwargs):
            stock_init(self, *args, **kwargs)
            if str(getattr(self, name_field, "")).startswith(FAIL_PREFIX):
                setattr(self, status_field, "Failed")
                self.failure_reason = "AlgorithmError: the emulator fails jobs named %s..." % FAIL_PREFIX
                if hasattr(self, "secondary_status"):
                    self.secondary_status = "Failed"

        cls.__init__ = init

    fail_when_named(models.FakeTrainingJob, "training_job_name", "training_job_status")
    fail_when_named(models.FakeProcessingJob, "processing_job_name", "processing_job_status")
    fail_when_named(models.FakeTransformJob, "transform_job_name", "transform_job_status")


# ---------------------------------------------------------------------------------------------
# 4. Jobs whose image is local:<path> run <path>
# ---------------------------------------------------------------------------------------------

LOCAL_IMAGE = "local:"


class Children:
    """The processes jobs run, so that they end with the emulator."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = set()

    def run(self, cmd, env, stop_when=None):
        """(exit status, stderr, stopped) of `cmd`: killed after JOB_TIMEOUT_SECONDS, or as soon
        as `stop_when()` holds (then `stopped`)."""
        with tempfile.TemporaryFile(mode="w+") as err_file:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err_file, text=True)
            with self._lock:
                self._running.add(proc)
            stopped, note = False, ""
            deadline = time.time() + JOB_TIMEOUT_SECONDS
            try:
                while proc.poll() is None:
                    if stop_when is not None and stop_when():
                        proc.kill()
                        stopped = True
                    elif time.time() > deadline:
                        proc.kill()
                        note = "\nkilled after %d s" % JOB_TIMEOUT_SECONDS
                    if stopped or note:
                        proc.wait()
                    else:
                        time.sleep(0.02)
            finally:
                with self._lock:
                    self._running.discard(proc)
            err_file.seek(0)
            return proc.returncode, err_file.read() + note, stopped

    def kill_all(self):
        with self._lock:
            for proc in self._running:
                try:
                    proc.kill()
                except OSError:
                    pass


CHILDREN = Children()


def s3_client():
    import boto3

    env = aws_env()
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def split_s3_uri(uri):
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix


def s3_keys(uri):
    """The keys below s3://bucket/prefix (or the one object it names), sorted."""
    bucket, prefix = split_s3_uri(uri)
    keys = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def relative_key(key, prefix):
    """Where `key` lands below the directory its prefix is copied to."""
    if key == prefix:
        return os.path.basename(key)
    return key[len(prefix):].lstrip("/")


def copy_from_s3(uri, dest, only=None):
    """Copies the objects below `uri` into dest/ (`only`: a subset of their keys). dest always exists."""
    bucket, prefix = split_s3_uri(uri)
    s3 = s3_client()
    os.makedirs(dest, exist_ok=True)
    for key in (s3_keys(uri) if only is None else only):
        rel = relative_key(key, prefix)
        if not rel:
            continue
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path)


def container_path(root, path):
    """Where a container path (/opt/ml/...) lies in the job's stand-in tree."""
    if path.startswith("/opt/ml"):
        return os.path.join(root, os.path.relpath(path, "/opt/ml"))
    return os.path.join(root, path.lstrip("/"))


def write_resource_config(path, host, hosts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"current_host": host, "hosts": hosts}, f)


def write_job_log(group, stream, text):
    """Puts a container's output into CloudWatch Logs, as SageMaker does."""
    import boto3

    env = aws_env()
    logs = boto3.client("logs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": line} for line in text.splitlines() if line.strip()]
    if events:
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def run_container(image, entrypoint, arguments, root, stop_when=None, log_to=None):
    """Runs a `local:<path>` image as SageMaker runs a container; (ok, reason, stopped). `log_to`:
    the (log group, stream) its output goes to."""
    executable = image[len(LOCAL_IMAGE):]
    cmd = [executable] + list(entrypoint or ["wf"])[1:] + list(arguments or [])
    env = dict(os.environ, WF_SM_ROOT=root, WF_PLAIN="1", **aws_env())
    try:
        status, err, stopped = CHILDREN.run(cmd, env, stop_when)
    except OSError as e:
        return False, "cannot run %s: %s" % (cmd, e), False
    log("%s -> exit %s%s\n%s" % (" ".join(cmd), status, " (interrupted)" if stopped else "",
                                 err[-4000:]))
    if log_to is not None:
        try:
            write_job_log(log_to[0], log_to[1], err)
        except Exception as e:  # noqa: BLE001  (a job's log is not worth failing the job for)
            log("cannot write the job's log to %s: %r" % (log_to, e))
    return status == 0, "exit %s: %s" % (status, err.strip()[-900:]), stopped


def copy_to_s3(src, uri):
    """Copies the files below src/ to below `uri`, as SageMaker syncs a checkpoint directory."""
    bucket, prefix = split_s3_uri(uri)
    s3 = s3_client()
    for dirpath, _, files in os.walk(src):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src).replace(os.sep, "/")
            s3.upload_file(path, bucket, prefix.rstrip("/") + "/" + rel if prefix else rel)


def has_checkpoint(directory):
    for _, _, files in os.walk(directory):
        if "checkpoint.json" in files:
            return True
    return False

def host_names(count):
    return ["algo-%d" % (i + 1) for i in range(max(1, count))]


def stage_processing_inputs(job, roots):
    count = len(roots)
    for spec in job.processing_inputs or []:
        s3 = spec.get("S3Input")
        if not s3:
            continue
        local = s3["LocalPath"]
        if s3.get("S3DataDistributionType") == "ShardedByS3Key" and count > 1:
            keys = s3_keys(s3["S3Uri"])
            for i, root in enumerate(roots):
                copy_from_s3(s3["S3Uri"], container_path(root, local), only=keys[i::count])
        else:
            for root in roots:
                copy_from_s3(s3["S3Uri"], container_path(root, local))


def run_processing_job(job):
    resources = getattr(job, "processing_resources", None) or {}
    count = int((resources.get("ClusterConfig") or {}).get("InstanceCount", 1))
    hosts = host_names(count)
    roots = [tempfile.mkdtemp(prefix="wf-sm-") for _ in hosts]
    try:
        stage_processing_inputs(job, roots)
        spec = job.app_specification
        results = [(False, "did not run")] * len(hosts)

        def instance(i):
            write_resource_config(os.path.join(roots[i], "config", "resourceconfig.json"),
                                  hosts[i], hosts)
            stream = "%s/%s-%d" % (job.processing_job_name, hosts[i], int(time.time()))
            results[i] = run_container(spec["ImageUri"], spec.get("ContainerEntrypoint"),
                                       spec.get("ContainerArguments"), roots[i],
                                       log_to=("/aws/sagemaker/ProcessingJobs", stream))[:2]

        threads = [threading.Thread(target=instance, args=(i,)) for i in range(len(hosts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failures = ["%s: %s" % (hosts[i], why) for i, (ok, why) in enumerate(results) if not ok]
        ok, why = not failures, "; ".join(failures)[-1000:]
    except Exception as e:  # noqa: BLE001  (any staging error fails the job, as on SageMaker)
        ok, why = False, "staging the job failed: %r" % (e,)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    job.processing_job_status = "Completed" if ok else "Failed"
    if not ok:
        job.failure_reason = why


def fsx_import_path(account, region, file_system_id):
    from moto.fsx.models import fsx_backends

    fs = fsx_backends[account][region].file_systems[file_system_id]
    lustre = fs.to_dict().get("LustreConfiguration") or {}
    repository = lustre.get("DataRepositoryConfiguration") or {}
    return repository.get("ImportPath") or lustre.get("ImportPath")


def channel_uri(channel, account, region):
    """The S3 location a training channel reads, FSx channels included."""
    source = channel.get("DataSource", {})
    if "S3DataSource" in source:
        return source["S3DataSource"]["S3Uri"]
    fsx = source["FileSystemDataSource"]
    base = fsx_import_path(account, region, fsx["FileSystemId"]).rstrip("/")
    # DirectoryPath is /<mount name>/<path below the import path>
    below = fsx.get("DirectoryPath", "/").strip("/").split("/", 1)[1:]
    return base + ("/" + below[0] if below else "") + "/"


INTERRUPT_TAG = ("wf-emulator:interrupt", "after-first-checkpoint")


def run_training_job(job, account, region):
    checkpoint = getattr(job, "wf_checkpoint_config", None) or {}
    tags = [(t.get("Key"), t.get("Value")) for t in getattr(job, "wf_tags", None) or []]
    interrupt = bool(getattr(job, "wf_spot", False)) and INTERRUPT_TAG in tags and checkpoint
    ok, why = False, "did not run"
    while True:
        root = tempfile.mkdtemp(prefix="wf-sm-")
        stopped = False
        try:
            for channel in job.input_data_config or []:
                copy_from_s3(channel_uri(channel, account, region),
                             os.path.join(root, "input", "data", channel["ChannelName"]))
            hosts = host_names(int((job.resource_config or {}).get("InstanceCount", 1)))
            write_resource_config(os.path.join(root, "input", "config", "resourceconfig.json"),
                                  hosts[0], hosts)
            local = None
            if checkpoint:
                local = container_path(root, checkpoint.get("LocalPath", "/opt/ml/checkpoints"))
                copy_from_s3(checkpoint["S3Uri"], local)
            spec = job.algorithm_specification
            stop_when = (lambda: has_checkpoint(local)) if interrupt else None
            stream = "%s/%s-%d" % (job.training_job_name, hosts[0], int(time.time()))
            ok, why, stopped = run_container(spec["TrainingImage"], spec.get("ContainerEntrypoint"),
                                             spec.get("ContainerArguments"), root, stop_when,
                                             log_to=("/aws/sagemaker/TrainingJobs", stream))
            if local is not None:
                copy_to_s3(local, checkpoint["S3Uri"])
        except Exception as e:  # noqa: BLE001
            ok, why = False, "staging the job failed: %r" % (e,)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if not stopped:
            break
        # Spot capacity came back: the job starts again with its checkpoints restored.
        log("training job %s interrupted after its first checkpoint; restarting" %
            job.training_job_name)
        interrupt = False
    job.training_job_status = "Completed" if ok else "Failed"
    if hasattr(job, "secondary_status"):
        job.secondary_status = job.training_job_status
    if not ok:
        job.failure_reason = why


def start_in_background(target, *args):
    threading.Thread(target=target, args=args, daemon=True).start()


def run_local_jobs():
    """Hooks the create handlers: they see the request (moto's backend drops ProcessingResources)."""
    from moto.sagemaker.responses import SageMakerResponse

    stock_processing = SageMakerResponse.create_processing_job
    stock_training = SageMakerResponse.create_training_job

    def create_processing_job(self):
        result = stock_processing(self)
        job = self.sagemaker_backend.processing_jobs[self._get_param("ProcessingJobName")]
        job.processing_resources = self._get_param("ProcessingResources")
        image = str((job.app_specification or {}).get("ImageUri", ""))
        if image.startswith(LOCAL_IMAGE) and job.processing_job_status != "Failed":
            job.processing_job_status = "InProgress"
            start_in_background(run_processing_job, job)
        return result

    def create_training_job(self):
        result = stock_training(self)
        job = self.sagemaker_backend.training_jobs[self._get_param("TrainingJobName")]
        job.wf_checkpoint_config = self._get_param("CheckpointConfig")
        job.wf_spot = self._get_param("EnableManagedSpotTraining")
        job.wf_tags = self._get_param("Tags")
        image = str((job.algorithm_specification or {}).get("TrainingImage", ""))
        if image.startswith(LOCAL_IMAGE) and job.training_job_status != "Failed":
            job.training_job_status = "InProgress"
            if hasattr(job, "secondary_status"):
                job.secondary_status = "InProgress"
            start_in_background(run_training_job, job, self.current_account, self.region)
        return result

    SageMakerResponse.create_processing_job = create_processing_job
    SageMakerResponse.create_training_job = create_training_job


# ---------------------------------------------------------------------------------------------
# 5. FSx: Lifecycle, DataRepositoryConfiguration, data repository tasks
# ---------------------------------------------------------------------------------------------

REPOSITORY_FIELDS = ("ImportPath", "ExportPath", "ImportedFileChunkSize")


def complete_fsx():
    from moto.core.exceptions import JsonRESTError
    from moto.fsx import models, responses

    stock_to_dict = models.FileSystem.to_dict

    def to_dict(self):
        out = stock_to_dict(self)
        out.setdefault("Lifecycle", "AVAILABLE")
        lustre = out.get("LustreConfiguration")
        if lustre and any(field in lustre for field in REPOSITORY_FIELDS):
            rest = {k: v for k, v in lustre.items() if k not in REPOSITORY_FIELDS}
            rest["DataRepositoryConfiguration"] = {
                k: lustre[k] for k in REPOSITORY_FIELDS if k in lustre}
            out["LustreConfiguration"] = rest
        return out

    models.FileSystem.to_dict = to_dict

    def tasks_of(backend):
        # Kept on the backend, so that /moto-api/reset forgets them with everything else.
        if not hasattr(backend, "wf_data_repository_tasks"):
            backend.wf_data_repository_tasks = []
        return backend.wf_data_repository_tasks

    def create_data_repository_task(self):
        request = json.loads(self.body)
        fs_id = request["FileSystemId"]
        if fs_id not in self.fsx_backend.file_systems:
            raise JsonRESTError("FileSystemNotFound", "File system %s not found" % fs_id)
        task_id = "task-" + uuid.uuid4().hex[:17]
        now = time.time()
        task = {
            "TaskId": task_id,
            "Lifecycle": "SUCCEEDED",  # nothing to copy: the emulated file system reads S3 itself
            "Type": request["Type"],
            "FileSystemId": fs_id,
            "Paths": request.get("Paths", []),
            "CreationTime": now,
            "StartTime": now,
            "EndTime": now,
            "ResourceARN": "arn:aws:fsx:%s:%s:task/%s" % (self.region, self.current_account, task_id),
            "Report": request.get("Report", {"Enabled": False}),
        }
        tasks_of(self.fsx_backend).append(task)
        return json.dumps({"DataRepositoryTask": task})

    def describe_data_repository_tasks(self):
        request = json.loads(self.body or "{}")
        wanted = set(request.get("TaskIds") or [])
        tasks = [t for t in tasks_of(self.fsx_backend) if not wanted or t["TaskId"] in wanted]
        return json.dumps({"DataRepositoryTasks": tasks})

    responses.FSxResponse.create_data_repository_task = create_data_repository_task
    responses.FSxResponse.describe_data_repository_tasks = describe_data_repository_tasks


# ---------------------------------------------------------------------------------------------
# 6. Escapes in intrinsic functions
# ---------------------------------------------------------------------------------------------

def undo_json_doubling(text):
    """moto's ASL lexer leaves JSON's escaped backslash (two characters) in string literals."""
    return text.replace("\\\\", "\\")


def drop_escapes(text):
    """`\\X` -> X."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def format_template(template, values):
    """States.Format: `\\X` is the character X, each `{}` the next value."""
    out, i, next_value = [], 0, 0
    while i < len(template):
        if template[i] == "\\" and i + 1 < len(template):
            out.append(template[i + 1])
            i += 2
        elif template.startswith("{}", i):
            out.append(values[next_value] if next_value < len(values) else "")
            next_value += 1
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def fix_intrinsic_escapes():
    from moto.stepfunctions.parser.asl.component.intrinsic.argument.argument import ArgumentLiteral
    from moto.stepfunctions.parser.asl.component.intrinsic.function.statesfunction.generic.string_format import (  # noqa: E501
        StringFormat)

    def literal_value(self, env):
        value = self.definition_value
        return drop_escapes(undo_json_doubling(value)) if isinstance(value, str) else value

    def string_format(self, env):
        self.argument_list.eval(env=env)
        args = env.stack.pop()
        first = self.argument_list.arguments[0]
        # A literal template is read before its escapes are dropped: `\{\}` is text, `{}` a slot.
        if isinstance(first, ArgumentLiteral):
            template = undo_json_doubling(first.definition_value)
        else:
            template = args[0]
        env.stack.append(format_template(template, [self._to_str_repr(v) for v in args[1:]]))

    ArgumentLiteral._eval_argument = literal_value
    StringFormat._eval_body = string_format


# ---------------------------------------------------------------------------------------------
# 7. aws-sdk:s3:getObject returns the body as a string
# ---------------------------------------------------------------------------------------------

def read_sdk_bodies():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (  # noqa: E501
        StateTaskServiceAwsSdk)

    stock = StateTaskServiceAwsSdk._eval_service_task

    def eval_service_task(self, env, *args, **kwargs):
        stock(self, env, *args, **kwargs)
        output = env.stack[-1] if env.stack else None
        if isinstance(output, dict) and hasattr(output.get("Body"), "read"):
            output["Body"] = output["Body"].read().decode("utf-8", "replace")

    StateTaskServiceAwsSdk._eval_service_task = eval_service_task


# ---------------------------------------------------------------------------------------------
# 8. SDK error names as AWS spells them
# ---------------------------------------------------------------------------------------------

def name_sdk_errors():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_aws_sdk as sdk)

    sdk._SERVICE_ERROR_NAMES.update({"s3": "S3", "fsx": "FSx", "sagemaker": "SageMaker"})


# ---------------------------------------------------------------------------------------------
# 9. Tasks call AWS as the state machine's role
# ---------------------------------------------------------------------------------------------

def run_tasks_as_the_role():
    import importlib
    import sys

    import boto3
    from botocore.config import Config
    from moto.stepfunctions.parser.asl.utils import boto_client as clients
    from moto.sts.models import sts_backends

    # Load the modules that bind boto_client_for by name, so that each gets the replacement.
    for module in ("state_task_service_aws_sdk", "state_task_service_unsupported"):
        importlib.import_module("moto.stepfunctions.parser.asl.component.state.exec.state_task."
                                "service." + module)
    stock = clients.boto_client_for

    def boto_client_for(region, service, state_credentials=None):
        role = getattr(state_credentials, "role_arn", None)
        if not role or not str(role).startswith("arn:aws:iam::"):
            return stock(region=region, service=service, state_credentials=state_credentials)
        account = str(role).split(":")[4]
        assumed = sts_backends[account]["global"].assume_role(
            region_name=region, role_session_name="wf-state-machine", role_arn=role,
            policy=None, duration=900, external_id=None)
        return boto3.client(
            service, region_name=region, endpoint_url=endpoint(),
            aws_access_key_id=assumed.access_key_id,
            aws_secret_access_key=assumed.secret_access_key,
            aws_session_token=assumed.session_token,
            config=Config(parameter_validation=False,
                          retries={"max_attempts": 0, "total_max_attempts": 1}))

    clients.boto_client_for = boto_client_for
    for name, module in list(sys.modules.items()):
        if name.startswith("moto.stepfunctions") and getattr(module, "boto_client_for", None) is stock:
            module.boto_client_for = boto_client_for


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

def complete_moto():
    run_tasks_as_the_role()
    enable_state_machine_execution()
    add_sagemaker_sync()
    make_fail_jobs_fail()
    run_local_jobs()
    complete_fsx()
    fix_intrinsic_escapes()
    read_sdk_bodies()
    name_sdk_errors()


def stop(status=0):
    """Ends the emulator now, with the jobs it runs."""
    CHILDREN.kill_all()
    sys.stderr.flush()
    os._exit(status)


def exit_when_stdin_closes():
    def watch():
        try:
            while os.read(sys.stdin.fileno(), 65536):
                pass
        except OSError:
            pass
        log("standard input closed: stopping")
        stop(0)

    threading.Thread(target=watch, name="stdin-watchdog", daemon=True).start()


def serve(port, port_file):
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication, MotoRequestHandler, create_backend_app)

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(LOOPBACK, port, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.server_port)
    if port_file:
        partial = port_file + ".partial"
        with open(partial, "w") as f:
            f.write("%d\n" % server.server_port)
        os.replace(partial, port_file)
    log("listening on %s" % endpoint())
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--port-file", help="file that receives the port once it is bound")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="exit when standard input reaches end of file")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop(0))
    if args.exit_with_stdin:
        exit_when_stdin_closes()
    complete_moto()
    serve(args.port, args.port_file)


if __name__ == "__main__":
    main()
