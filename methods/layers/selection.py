"""The one parameter model for "which layers does a method touch", shared by every method.

A method's ``Params`` subclasses :class:`LayerSelection`, so the suite fields
``include``, ``exclude``, ``skip_first_conv`` and ``skip_classifier`` mean the
same thing for every method and are declared once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from methods.layers.surgery import FACTORIZABLE, select_layers


class LayerSelection(BaseModel):
    """Layers a method may compress: module-path patterns plus the usual exceptions."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = Field(default_factory=list,
                               description="module path patterns to use (fnmatch; empty: all)")
    exclude: list[str] = Field(default_factory=list,
                               description="module path patterns to skip (fnmatch)")
    skip_first_conv: bool = Field(default=True, description="keep the first conv dense")
    skip_classifier: bool = Field(default=True, description="keep the classifier dense")

    def select(self, model: nn.Module,
               types: tuple[type[nn.Module], ...] = FACTORIZABLE) -> dict[str, nn.Module]:
        """Path -> layer for every selected Linear/Conv2d (grouped convs never)."""
        return select_layers(model, self.include or None, self.exclude or None,
                             self.skip_first_conv, self.skip_classifier, types=types)
