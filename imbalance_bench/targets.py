"""The implementation a config node's `_target_` names, and building it.

`_target_` alone selects an implementation: a class (or, where one option builds one of two
classes, a factory function). What the rest of imbench must know before building it (the label
kinds a loss trains on, the side of a dataset's images, where a dataset's files must be) is
declared on that class as attributes and read from there. An implementation that declares its
`name` is labelled by the node's `name` key, which must agree with it and is not passed on."""

from __future__ import annotations

from typing import Any

from imbalance_bench.errors import ConfigError, ImbenchError


def implementation(node: Any, key: str) -> Any:
    """The class or factory the config node at `key` names in `_target_`, imported. A target
    `module.Class.method` (a classmethod) gives the class, which holds the declarations."""
    from hydra._internal.utils import _locate  # hydra.utils.get_object, without its error log line

    target = node.get("_target_") if hasattr(node, "get") else None
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}._target_ is missing: name the class that implements {key}")
    try:
        found = _locate(target)
    except Exception as exc:
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key}._target_={target} is not allowed: it cannot be imported ({reason})") from None
    return getattr(found, "__self__", found)


def declared_name(node: Any, key: str) -> str | None:
    """The name the implementation at `key` declares (None when it declares none: a model factory
    takes `name` as the architecture to build)."""
    name = getattr(implementation(node, key), "name", None)
    return name if isinstance(name, str) else None


def check_label(node: Any, key: str) -> None:
    """A node's `name` labels its implementation in run files and reports, so it must be the name the
    implementation declares: `loss.name=ce` does not turn focal's node into cross-entropy."""
    name = declared_name(node, key)
    if name is not None and "name" in node and node["name"] != name:
        raise ConfigError(f"{key}.name={node['name']} is not allowed: it labels the class that {key}._target_ names, "
                          f"whose name is {name}; pick another implementation with {key.split('.')[0]}=<option>")


def build(node: Any, key: str, **kwargs) -> Any:
    """Hydra's instantiate of the node at `key`, without the label `name` where the implementation
    declares its own; a user error raised inside the target surfaces as itself."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if "name" in node and declared_name(node, key) is not None:
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        node = {k: v for k, v in values.items() if k != "name"}
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ImbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
