"""Clusters, their services' desired sizes and notes, and what the agents of their VMs reported.

A cluster's VMs are ordinary rows of ``vms`` (with ``cluster_id`` and ``cluster_service``), moved through
:class:`~cloudpilot.store.vms.VMRepository` like any VM; this repository only reads them by cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, select, update

from cloudpilot.domain.clusters import (
    Cluster,
    ClusterDefinition,
    ClusterInstance,
    ClusterState,
    InstanceReport,
    ServiceStatus,
    check_cluster_transition,
)
from cloudpilot.domain.vms import VM
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.schema import cluster_instances, cluster_services, clusters, vms
from cloudpilot.store.vms import vm_from_row


class ClusterRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, definition: ClusterDefinition, vo: str, owner: str, order: list[str], now: float) -> Cluster:
        """Store a checked definition; each service starts with its ``instances`` (default ``min``) wanted."""
        with self.db.write() as conn:
            cluster_id = conn.execute(
                insert(clusters)
                .values(
                    name=definition.name,
                    vo=vo,
                    owner=owner,
                    state=ClusterState.ACTIVE.value,
                    definition=definition.model_dump_json(),
                    created_at=now,
                    updated_at=now,
                )
                .returning(clusters.c.id)
            ).scalar_one()
            for position, name in enumerate(order):
                conn.execute(
                    insert(cluster_services).values(
                        cluster_id=cluster_id,
                        name=name,
                        position=position,
                        desired=definition.services[name].initial,
                        note="",
                    )
                )
            return self._get(conn, cluster_id)

    def get(self, cluster_id: int) -> Cluster:
        with self.db.read() as conn:
            return self._get(conn, cluster_id)

    def list(
        self, states: set[ClusterState] | None = None, vo: str | None = None, owner: str | None = None
    ) -> list[Cluster]:
        """Clusters, oldest first, optionally of one VO/owner and in some states."""
        stmt = select(clusters).order_by(clusters.c.id)
        if states is not None:
            stmt = stmt.where(clusters.c.state.in_([s.value for s in states]))
        if vo is not None:
            stmt = stmt.where(clusters.c.vo == vo)
        if owner is not None:
            stmt = stmt.where(clusters.c.owner == owner)
        with self.db.read() as conn:
            rows = conn.execute(stmt).mappings().all()
            return [self._cluster(conn, row) for row in rows]

    def move(self, cluster_id: int, target: ClusterState, now: float) -> Cluster:
        with self.db.write() as conn:
            current = self._get(conn, cluster_id)
            check_cluster_transition(cluster_id, current.state, target)
            result = conn.execute(
                update(clusters)
                .where(clusters.c.id == cluster_id, clusters.c.state == current.state.value)
                .values(state=target.value, updated_at=now)
            )
            if result.rowcount != 1:
                raise Conflict(f"cluster {cluster_id} changed state while being moved to {target.value}")
            return self._get(conn, cluster_id)

    def set_desired(self, cluster_id: int, service: str, desired: int, now: float) -> Cluster:
        """Change how many instances of ``service`` are wanted (the caller checked the bounds); only while the
        cluster is active."""
        with self.db.write() as conn:
            current = self._get(conn, cluster_id)
            if current.state is not ClusterState.ACTIVE:
                raise Conflict(f"cluster {cluster_id} is {current.state.value}: it cannot be scaled")
            conn.execute(
                update(cluster_services)
                .where(cluster_services.c.cluster_id == cluster_id, cluster_services.c.name == service)
                .values(desired=desired)
            )
            conn.execute(update(clusters).where(clusters.c.id == cluster_id).values(updated_at=now))
            return self._get(conn, cluster_id)

    def set_note(self, cluster_id: int, service: str, note: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(cluster_services)
                .where(cluster_services.c.cluster_id == cluster_id, cluster_services.c.name == service)
                .values(note=note[:1000])
            )

    # --- instances ----------------------------------------------------------------------------------------

    def vms(self, cluster_id: int) -> list[VM]:
        """Every VM of the cluster, destroyed ones included, oldest first."""
        stmt = select(vms).where(vms.c.cluster_id == cluster_id).order_by(vms.c.created_at, vms.c.id)
        with self.db.read() as conn:
            return [vm_from_row(r) for r in conn.execute(stmt).mappings()]

    def instances(self, cluster_id: int) -> dict[str, ClusterInstance]:
        """What the agents of the cluster's VMs reported, by VM id (VMs whose agent never reported are absent)."""
        stmt = select(cluster_instances).where(cluster_instances.c.cluster_id == cluster_id)
        with self.db.read() as conn:
            return {r["vm_id"]: _instance(r) for r in conn.execute(stmt).mappings()}

    def report(
        self, vm_id: str, cluster_id: int, service: str, report: InstanceReport, now: float, ready: bool
    ) -> ClusterInstance:
        """Record (or replace) an agent's report; ``ready`` marks the instance ready now unless it already is."""
        with self.db.write() as conn:
            row = conn.execute(select(cluster_instances).where(cluster_instances.c.vm_id == vm_id)).mappings().first()
            values: dict[str, Any] = {
                "address": report.address,
                "port": report.port,
                "hostname": report.hostname[:255],
                "reported_at": now,
            }
            if row is None:
                conn.execute(
                    insert(cluster_instances).values(
                        vm_id=vm_id, cluster_id=cluster_id, service=service, ready_at=now if ready else None, **values
                    )
                )
            else:
                if ready and row["ready_at"] is None:
                    values["ready_at"] = now
                conn.execute(update(cluster_instances).where(cluster_instances.c.vm_id == vm_id).values(**values))
            return _instance(
                conn.execute(select(cluster_instances).where(cluster_instances.c.vm_id == vm_id)).mappings().one()
            )

    def mark_ready(self, vm_id: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(cluster_instances)
                .where(cluster_instances.c.vm_id == vm_id, cluster_instances.c.ready_at.is_(None))
                .values(ready_at=now)
            )

    # --- rows ---------------------------------------------------------------------------------------------

    def _get(self, conn: Connection, cluster_id: int) -> Cluster:
        row = conn.execute(select(clusters).where(clusters.c.id == cluster_id)).mappings().first()
        if row is None:
            raise NotFound(f"cluster {cluster_id} does not exist")
        return self._cluster(conn, row)

    def _cluster(self, conn: Connection, row: Mapping[str, Any]) -> Cluster:
        services = {
            r["name"]: ServiceStatus(r["name"], r["position"], r["desired"], r["note"] or "")
            for r in conn.execute(
                select(cluster_services)
                .where(cluster_services.c.cluster_id == row["id"])
                .order_by(cluster_services.c.position)
            ).mappings()
        }
        return Cluster(
            id=row["id"],
            name=row["name"],
            vo=row["vo"],
            owner=row["owner"],
            state=ClusterState(row["state"]),
            definition=ClusterDefinition.model_validate_json(row["definition"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            services=services,
        )


def _instance(row: Mapping[str, Any]) -> ClusterInstance:
    report = None
    if row["address"] is not None and row["port"] is not None:
        report = InstanceReport(row["address"], row["port"], row["hostname"] or "")
    return ClusterInstance(
        vm_id=row["vm_id"],
        cluster_id=row["cluster_id"],
        service=row["service"],
        report=report,
        reported_at=row["reported_at"],
        ready_at=row["ready_at"],
    )
