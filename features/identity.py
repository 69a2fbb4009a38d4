"""What makes cached features interchangeable: one type, read and written everywhere.

A head trained on one feature file may be applied to, fused with or checked against
another only when the two agree on every compared field of :class:`FeatureIdentity`.
The same type is stored as HDF5 root attributes (:meth:`FeatureIdentity.to_attrs`) and
as JSON in ``head.json`` (:meth:`FeatureIdentity.to_dict`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

from features.preprocessing import Preprocessing

if TYPE_CHECKING:  # avoids loading the backbone registry for a type name
    from features.backbones import Backbone


@dataclass(frozen=True)
class FeatureIdentity:
    """The backbone, weights, layer, preprocessing and classes that produced a set of features.

    Attributes
    ----------
    backbone : str
        Registry name.
    weights : str
        Identity of the parameters (``torchvision:...``, ``sha256:...`` or ``none``).
    feature_layer : str
        Which activation the features are.
    feature_dim : int
    preprocessing : Preprocessing
    classes : tuple of str
        Class names, in label order.
    weights_source : str
        Where the weights were read from. Recorded, not compared: the same weights
        read from another place give the same features.
    """

    backbone: str
    weights: str
    feature_layer: str
    feature_dim: int
    preprocessing: Preprocessing
    classes: tuple[str, ...]
    weights_source: str = ""

    COMPARED = ("backbone", "weights", "feature_layer", "feature_dim", "preprocessing", "classes")

    @classmethod
    def of_backbone(cls, backbone: "Backbone", classes: list[str] | tuple[str, ...]) -> "FeatureIdentity":
        """The identity of features that ``backbone`` gives for ``classes``."""
        return cls(backbone=backbone.spec.name, weights=backbone.weights.identity,
                   feature_layer=backbone.spec.feature_layer, feature_dim=backbone.feature_dim,
                   preprocessing=backbone.preprocessing, classes=tuple(classes),
                   weights_source=backbone.weights.source)

    # HDF5 root attributes: strings and one integer, JSON for the structured values.
    def to_attrs(self) -> dict[str, Any]:
        """The feature file's root attributes for this identity."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_source": self.weights_source,
                "feature_layer": self.feature_layer, "feature_dim": int(self.feature_dim),
                "preprocessing": json.dumps(self.preprocessing.to_dict(), sort_keys=True),
                "classes": json.dumps(list(self.classes))}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "FeatureIdentity":
        """Inverse of :meth:`to_attrs`.

        Raises
        ------
        KeyError, ValueError
            A missing or malformed attribute.
        """
        return cls(backbone=str(attrs["backbone"]), weights=str(attrs["weights"]),
                   feature_layer=str(attrs["feature_layer"]), feature_dim=int(attrs["feature_dim"]),
                   preprocessing=Preprocessing.from_dict(json.loads(attrs["preprocessing"])),
                   classes=tuple(json.loads(attrs["classes"])), weights_source=str(attrs.get("weights_source", "")))

    # JSON (head.json, report.json)
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_source": self.weights_source,
                "feature_layer": self.feature_layer, "feature_dim": int(self.feature_dim),
                "preprocessing": self.preprocessing.to_dict(), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "FeatureIdentity":
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        KeyError, ValueError, TypeError
            A missing or malformed field.
        """
        return cls(backbone=str(raw["backbone"]), weights=str(raw["weights"]), feature_layer=str(raw["feature_layer"]),
                   feature_dim=int(raw["feature_dim"]), preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
                   classes=tuple(raw["classes"]), weights_source=str(raw.get("weights_source", "")))

    def mismatches(self, other: "FeatureIdentity") -> dict[str, tuple[Any, Any]]:
        """Each compared field that differs, as ``{field: (value here, value in other)}``.

        Preprocessing is narrowed to the entries that differ and classes are lists, so
        the values read well in a message. Empty when the identities are interchangeable.
        """
        found = {}
        for name in self.COMPARED:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine == theirs:
                continue
            if name == "preprocessing":
                a, b = mine.to_dict(), theirs.to_dict()
                mine = {k: a[k] for k in a if a[k] != b.get(k)}
                theirs = {k: b[k] for k in b if b[k] != a.get(k)}
            elif name == "classes":
                mine, theirs = list(mine), list(theirs)
            found[name] = (mine, theirs)
        return found


IDENTITY_FIELDS = tuple(f.name for f in fields(FeatureIdentity))
