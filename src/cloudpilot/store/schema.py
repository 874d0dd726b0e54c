"""The tables. Times are UNIX seconds (float) so SQLite and PostgreSQL compare them the same way."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a million-job queue.
Id = BigInteger().with_variant(Integer(), "sqlite")

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("vo", String(100)),
    Column("site", String(100)),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("vm_id", String(64)),  # a pilot token minted for one VM (migration 2)
    # Pilot sessions (migration 7): a registration exchanges a pilot token for a session token bound to the new
    # pilot; a VM's token registers once (``used_at``). ``renew_until`` caps a session's sliding expiry.
    Column("pilot_id", String(64)),
    Column("parent_id", String(32)),
    Column("used_at", Float),
    Column("renew_until", Float),
)

task_queues = Table(
    "task_queues",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("vo", String(100), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("cores", Integer, nullable=False),
    Column("memory_mb", Integer),
    Column("wall_seconds", Integer, nullable=False),
    Column("tags", Text, nullable=False),  # JSON list
    Column("sites_allow", Text, nullable=False),  # JSON list
    Column("sites_deny", Text, nullable=False),  # JSON list
    Column("created_at", Float, nullable=False),
    Column("image", String(200)),  # the endorsed image the jobs require (migration 4)
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tq_id", Id, ForeignKey("task_queues.id"), nullable=False),
    Column("vo", String(100), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("spec", Text, nullable=False),  # JSON of the JobSpec
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("cores", Integer, nullable=False),
    Column("wall_seconds", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("exit_code", Integer),
    Column("failure_reason", Text),
    Column("pilot_id", String(64)),
    Column("lease_expires_at", Float),
    Column("submitted_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("output_sandbox", String(80)),
    Column("cpu_seconds", Float),
    Column("max_rss_bytes", BigInteger),
    Column("progress", String(200)),
    Column("kill_requested", Boolean, nullable=False, default=False),
    # Events reported finished: where the next attempt starts (migration 3).
    Column("events_done", Integer, nullable=False, default=0, server_default="0"),
)
# The claim walks this index: first waiting job of a task queue in submission order.
# A user's classes, counted at each submission against jobs.max_waiting_classes_per_user (migration 11).
ix_task_queues_owner = Index("ix_task_queues_owner", task_queues.c.vo, task_queues.c.owner)
Index("ix_jobs_tq_state_id", jobs.c.tq_id, jobs.c.state, jobs.c.id)
Index("ix_jobs_state_lease", jobs.c.state, jobs.c.lease_expires_at)
Index("ix_jobs_owner_state", jobs.c.vo, jobs.c.owner, jobs.c.state)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

pilots = Table(
    "pilots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("token_id", String(32), nullable=False),
    Column("vo", String(100)),
    Column("site", String(100)),
    Column("cloud", String(100)),
    Column("hostname", String(255)),
    Column("cores", Integer, nullable=False),
    Column("memory_mb", Integer),
    Column("registered_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("shutdown_code", Integer),
    Column("shutdown_message", Text),
    Column("vm_id", String(64)),  # the VM it runs in, from its token (migration 2)
)

usage = Table(
    "usage",
    metadata,
    Column("vo", String(100), primary_key=True),
    Column("owner", String(200), primary_key=True),
    Column("core_seconds", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(32), nullable=False),
    # The bytes of a small sandbox held here rather than in the sandbox store (an output that came inline with
    # a final report); NULL for one in the store.
    Column("content", LargeBinary, nullable=True),
)

vms = Table(
    "vms",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("cloud", String(100), nullable=False),
    Column("vo", String(100), nullable=False),
    Column("flavor", String(100), nullable=False),
    Column("cores", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("instance_id", String(200)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("booted_at", Float),
    Column("last_seen_at", Float),
    Column("idle_since", Float),
    Column("expires_at", Float),
    Column("jobs_run", Integer, nullable=False, default=0),
    Column("shutdown_code", Integer),
    Column("shutdown_message", Text),
    Column("failure_reason", Text),
    Column("terminated_at", Float),
    # migration 3
    Column("site", String(100)),
    Column("image", String(200)),
    Column("hs06", Float),
    Column("shutdown_deadline", Float),  # a scheduled shutdown's deadline (the earliest that applies)
    Column("permission", Text),  # the last refusal of the site's policy, if any
    # migration 5: the cluster and service a VM belongs to (None: a pilot VM of the provisioner)
    Column("cluster_id", Id),
    Column("cluster_service", String(100)),
)
Index("ix_vms_state_cloud", vms.c.state, vms.c.cloud)
Index("ix_vms_cloud_created", vms.c.cloud, vms.c.created_at)
ix_vms_cluster = Index("ix_vms_cluster", vms.c.cluster_id)

vm_events = Table(
    "vm_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("vm_id", String(64), ForeignKey("vms.id"), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

# --- site control, events and accounting (migration 3) ------------------------------------------------------

site_shutdowns = Table(
    "site_shutdowns",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site", String(100), nullable=False),
    Column("cloud", String(100)),  # None: every cloud of the site
    Column("vm_id", String(64)),  # None: every VM of the cloud (or site)
    Column("deadline", Float, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("cancelled_at", Float),
)
Index("ix_site_shutdowns_site", site_shutdowns.c.site, site_shutdowns.c.cancelled_at)

site_vo_switches = Table(
    "site_vo_switches",
    metadata,
    Column("site", String(100), primary_key=True),
    Column("vo", String(100), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("set_at", Float, nullable=False),
    Column("set_by", String(200), nullable=False),
)

cloud_capacity = Table(
    "cloud_capacity",
    metadata,
    Column("cloud", String(100), primary_key=True),
    Column("max_vms", Integer, nullable=False),
    Column("set_at", Float, nullable=False),
    Column("set_by", String(200), nullable=False),
)

event_chunks = Table(
    "event_chunks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("first_event", Integer, nullable=False),
    Column("last_event", Integer, nullable=False),
    Column("sandbox_id", String(80), nullable=False),
    Column("at", Float, nullable=False),
)

# One record per VM, written when it is destroyed (the accounting of cloud usage; APEL cloud records).
vm_usage = Table(
    "vm_usage",
    metadata,
    Column("vm_id", String(64), primary_key=True),
    Column("cloud", String(100), nullable=False),
    Column("site", String(100), nullable=False),
    Column("vo", String(100), nullable=False),
    Column("flavor", String(100), nullable=False),
    Column("cores", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("image", String(200)),
    Column("instance_id", String(200)),
    Column("started_at", Float, nullable=False),  # when the cloud was asked for it
    Column("ended_at", Float, nullable=False),
    Column("wall_seconds", Float, nullable=False),
    Column("cpu_seconds", Float, nullable=False),  # of its jobs, from heartbeats and reports
    Column("hs06", Float, nullable=False),
    Column("price_per_core_hour", Float, nullable=False),
    Column("cost", Float, nullable=False),
    Column("jobs_run", Integer, nullable=False),
    Column("final_state", String(16), nullable=False),  # the state it was destroyed from
    Column("shutdown_code", Integer),
    Column("shutdown_message", Text),
    Column("recorded_at", Float, nullable=False),
)
Index("ix_vm_usage_ended", vm_usage.c.ended_at)

# One record per job that reached a final state, written in the same transaction as that state.
job_usage = Table(
    "job_usage",
    metadata,
    Column("job_id", Id, primary_key=True),
    Column("vo", String(100), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("site", String(100)),
    Column("cloud", String(100)),
    Column("vm_id", String(64)),
    Column("cores", Integer, nullable=False),
    Column("submitted_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float, nullable=False),
    Column("wall_seconds", Float, nullable=False),
    Column("cpu_seconds", Float, nullable=False),
    Column("exit_code", Integer),
    Column("attempts", Integer, nullable=False),
)
Index("ix_job_usage_ended", job_usage.c.ended_at)

# --- clusters of services (migration 5) ------------------------------------------------------------------------

clusters = Table(
    "clusters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("vo", String(100), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("definition", Text, nullable=False),  # JSON of the ClusterDefinition
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_clusters_vo_owner", clusters.c.vo, clusters.c.owner)

cluster_services = Table(
    "cluster_services",
    metadata,
    Column("cluster_id", Id, ForeignKey("clusters.id"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("position", Integer, nullable=False),  # in the start order
    Column("desired", Integer, nullable=False),  # instances wanted now, within the service's min and max
    Column("note", Text, nullable=False, default=""),  # what it waits for
)

# What the agent of each cluster VM reported (one row once it has reported).
cluster_instances = Table(
    "cluster_instances",
    metadata,
    Column("vm_id", String(64), ForeignKey("vms.id"), primary_key=True),
    Column("cluster_id", Id, ForeignKey("clusters.id"), nullable=False, index=True),
    Column("service", String(100), nullable=False),
    Column("address", String(64)),
    Column("port", Integer),
    Column("hostname", String(255)),
    Column("reported_at", Float),
    Column("ready_at", Float),
)

# --- image lists (migration 4) ------------------------------------------------------------------------------------

image_subscriptions = Table(
    "image_subscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("signature_url", Text, nullable=False),
    Column("endorser_key", Text, nullable=False),  # the trusted public key (PEM)
    Column("endorser_fingerprint", String(100), nullable=False),
    Column("endorser_name", String(500)),  # the hv:endorser DN required, if any
    Column("refresh_seconds", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    # the list held: its canonical JSON, signature and what identifies it
    Column("list_identifier", String(200)),
    Column("version", String(50)),
    Column("document", Text),
    Column("signature", Text),
    Column("expires_at", Float),
    Column("fetched_at", Float),  # when the list held was fetched and verified
    Column("checked_at", Float),  # the last attempt, successful or not
    Column("last_error", Text),  # why the last attempt was refused or failed (None: it succeeded)
)

# Images of the held lists, one row per dc:identifier (an identifier belongs to one subscription).
images = Table(
    "images",
    metadata,
    Column("identifier", String(200), primary_key=True),
    Column("subscription_id", Id, ForeignKey("image_subscriptions.id"), nullable=False, index=True),
    Column("list_identifier", String(200), nullable=False),
    Column("list_version", String(50), nullable=False),
    Column("entry", Text, nullable=False),  # JSON of its hv:image
    Column("expires_at", Float, nullable=False),  # the earlier of the list's and its own expiry
    Column("listed", Boolean, nullable=False),  # False: a newer version of its list dropped it
    Column("rejected_reason", Text),  # its file did not match hv:size / sl:checksum:sha512
    Column("local_path", Text),  # the verified file (clouds that register images themselves)
    Column("updated_at", Float, nullable=False),
)

# A site's revocation holds for the identifier whatever list endorses it, until reinstated.
image_revocations = Table(
    "image_revocations",
    metadata,
    Column("identifier", String(200), primary_key=True),
    Column("revoked_at", Float, nullable=False),
    Column("revoked_by", String(200), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

# Why each task queue's jobs wait, as the latest provisioning cycle explained it (policy/explain.py).
waiting_reasons = Table(
    "waiting_reasons",
    metadata,
    Column("tq_id", Id, primary_key=True),
    Column("summary", Text, nullable=False),
    Column("details", Text, nullable=False),  # JSON: {"clouds": {name: reason}, "pilots": reason | null}
    Column("explained_at", Float, nullable=False),
)

# The latest tail of each job's job.log, as its pilot sent it with a heartbeat (migration 8). Its own table: the
# jobs table is read whole by listings, and a few KiB per running job would only slow them.
job_log_tails = Table(
    "job_log_tails",
    metadata,
    Column("job_id", Id, primary_key=True),
    Column("attempt", Integer, nullable=False),  # the lease (attempt) whose pilot sent it
    Column("tail", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# One row (id 1): the epoch of the current leader, raised by each server that takes leadership (migration 9).
# Writes of the leader's loops check it in their own transaction, so a deposed leader's writes are refused
# (store/fence.py, services/leadership.py).
leadership = Table(
    "leadership",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", String(200), nullable=False),  # host:pid of the leader, for operators
    Column("since", Float, nullable=False),
)
