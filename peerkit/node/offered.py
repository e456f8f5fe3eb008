"""The methods of a :class:`~peerkit.Node` for what it offers others: the applications it
registered (invitations and streams to them are for it) and the objects it publishes."""

from __future__ import annotations

import uuid
from typing import Any

import anyio.lowlevel

from peerkit.bus import Bus
from peerkit.contacts import ContactManager
from peerkit.errors import LimitExceeded, NotSignedIn
from peerkit.events import ApplicationChanged, ObjectChanged
from peerkit.identity import PeerId
from peerkit.model import MAX_APPLICATIONS, MAX_OBJECTS, Application, ChangeType, PeerObject, Scope
from peerkit.node.nearby import Nearby
from peerkit.node.receivers import app_id as id_of

__all__ = ("OfferedMethods",)


class OfferedMethods:
    """Applications and objects; mixed into the Node, whose state (``_apps``, ``_objects``) they
    keep and whose event bus and discovery part they tell of each change."""

    _apps: dict[uuid.UUID, Application]
    _objects: dict[uuid.UUID, PeerObject]
    _bus: Bus[Any]
    _nearby: Nearby
    _scope: Scope
    contacts: ContactManager

    @property
    def id(self) -> PeerId:
        """This node's id (the Node's)."""
        raise NotImplementedError

    def _check_running(self) -> None:
        raise NotImplementedError  # (the Node's)

    # -- applications ----------------------------------------------------------------------
    async def register_application(self, application: Application) -> None:
        """Register ``application``: this node can then invite to it and be invited to it.

        :raises TypeError: when it is not an :class:`~peerkit.Application`.
        :raises ValueError: when an application with the same id is already registered.
        :raises LimitExceeded: when 64 applications are already registered.
        :raises NotRunning: when the node is not running.

        The change is made before the call first waits: cancelling the call does not undo it.
        """
        if not isinstance(application, Application):
            raise TypeError(f"expected an Application, not {type(application).__name__}")
        self._check_running()
        if application.id in self._apps:
            raise ValueError(f"application {application.id} is already registered")
        if len(self._apps) >= MAX_APPLICATIONS:
            raise LimitExceeded(
                f"{MAX_APPLICATIONS} applications are registered; the limit is {MAX_APPLICATIONS}"
            )
        self._apps[application.id] = application
        self._local_app_changed(ChangeType.ADDED, application)
        self._nearby.republish()  # people near me see it in the record
        await anyio.lowlevel.checkpoint()

    async def unregister_application(self, application: Application | uuid.UUID) -> None:
        """Unregister an application (by object or id); invitations to it are then declined.

        :raises ValueError: when no application with that id is registered.
        :raises NotRunning: when the node is not running.

        The change is made before the call first waits: cancelling the call does not undo it.
        """
        app_id = id_of(application)
        self._check_running()
        old = self._apps.pop(app_id, None)
        if old is None:
            raise ValueError(f"application {app_id} is not registered")
        self._local_app_changed(ChangeType.DELETED, old)
        self._nearby.republish()
        await anyio.lowlevel.checkpoint()

    def applications(self) -> list[Application]:
        """The registered applications, in registration order."""
        return list(self._apps.values())

    def _local_app_changed(self, change: ChangeType, application: Application) -> None:
        self._bus.publish(
            ApplicationChanged(
                peer_id=self.id,
                contact=self.contacts.me,
                endpoint=None,
                change=change,
                application=application,
                local=True,
            )
        )

    # -- objects ----------------------------------------------------------------------
    async def set_object(self, obj: PeerObject) -> None:
        """Publish ``obj`` (or replace the object with its id) to those its scope lets see it.

        :raises TypeError: when it is not a :class:`~peerkit.PeerObject`.
        :raises LimitExceeded: when 128 objects are published and this is a new one.
        :raises NotSignedIn: when the node is not signed in.
        :raises NotRunning: when the node is not running.

        The change is made before the call first waits: cancelling the call does not undo it.
        """
        if not isinstance(obj, PeerObject):
            raise TypeError(f"set_object takes a PeerObject, not {type(obj).__name__}")
        self._check_running()
        if not self._scope:
            raise NotSignedIn("sign in before publishing objects: await node.sign_in(Scope.ALL)")
        old = self._objects.get(obj.id)
        if old is None and len(self._objects) >= MAX_OBJECTS:
            raise LimitExceeded(f"{MAX_OBJECTS} objects are published; the limit is {MAX_OBJECTS}")
        self._objects[obj.id] = obj
        if old != obj:
            self._local_object_changed(ChangeType.ADDED if old is None else ChangeType.UPDATED, obj)
        await anyio.lowlevel.checkpoint()

    async def delete_object(self, obj: PeerObject | uuid.UUID) -> None:
        """Stop publishing an object (by object or id).

        :raises ValueError: when no object with that id is published.
        :raises NotRunning: when the node is not running.

        The change is made before the call first waits: cancelling the call does not undo it.
        """
        object_id = obj.id if isinstance(obj, PeerObject) else obj
        if not isinstance(object_id, uuid.UUID):
            raise TypeError(f"delete_object takes a PeerObject or its uuid.UUID, not {type(obj).__name__}")
        self._check_running()
        old = self._objects.pop(object_id, None)
        if old is None:
            raise ValueError(f"object {object_id} is not published")
        self._local_object_changed(ChangeType.DELETED, old)
        await anyio.lowlevel.checkpoint()

    def objects(self) -> list[PeerObject]:
        """The published objects, in the order they were first set."""
        return list(self._objects.values())

    def _local_object_changed(self, change: ChangeType, obj: PeerObject) -> None:
        me = self.contacts.me
        self._bus.publish(
            ObjectChanged(peer_id=self.id, contact=me, endpoint=None, change=change, object=obj, local=True)
        )
