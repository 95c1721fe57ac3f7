"""The resource tree."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault.root import Root


class MountTests(SynchronousTestCase):
    def test_same_resource_twice(self) -> None:
        """Backends of one kind may share a mount: the same resource at the same path is one mount."""
        root, shared = Root([]), Resource()
        root.mount("/v2/", shared)
        root.mount("/v2/", shared)
        self.assertIs(root.children[b"v2"], shared)

    def test_two_resources_one_path(self) -> None:
        """Two different resources cannot have one path."""
        root = Root([])
        root.mount("/a/b/", Resource())
        self.assertRaises(ValueError, root.mount, "/a/b/", Resource())
