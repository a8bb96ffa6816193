"""Which SQLAlchemy mapped classes a buffered step may touch, by name.

Only classes registered here are ever written to: a step that names another
model, or a field its class does not map, is refused before any SQL is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import DeclarativeBase, Mapper

from ccat_buffering.conflicts.kinds import ConflictPolicies
from ccat_buffering.errors import ConfigurationError, UnknownColumnError, UnknownModelError
from ccat_buffering.models import Step, Transaction, check_identifier

__all__ = ["ModelRegistry"]


class ModelRegistry:
    """Model names mapped to SQLAlchemy mapped classes.

    Args:
        models: Mapped classes, registered under their class names.
    """

    def __init__(self, models: Iterable[type[Any]] = ()) -> None:
        self._models: dict[str, type[Any]] = {}
        self._mappers: dict[str, Mapper[Any]] = {}
        self._fields: dict[str, frozenset[str]] = {}
        self._key_fields: dict[str, tuple[str, ...]] = {}
        self.conflict_policies = ConflictPolicies()
        """How conflicts of each model and column are decided (``reject`` unless set)."""
        for model in models:
            self.register(model)

    @classmethod
    def from_base(cls, base: type[DeclarativeBase] | Any) -> ModelRegistry:
        """Register every class mapped by a declarative base.

        Args:
            base: A ``DeclarativeBase`` subclass (or any class with a ``registry``).

        Returns:
            The registry.
        """
        return cls(mapper.class_ for mapper in base.registry.mappers)

    @classmethod
    def from_import_path(cls, path: str) -> ModelRegistry:
        """Register every class mapped by the declarative base at ``module:Name``.

        Args:
            path: For example ``"ccat_buffering.demo.example:Base"``.

        Returns:
            The registry.

        Raises:
            ConfigurationError: The path does not name an importable base.
        """
        import importlib

        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            raise ConfigurationError(f"models {path!r} is not of the form 'package.module:Base'")
        try:
            base = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"models {path!r} cannot be imported: {exc}") from exc
        if not hasattr(base, "registry"):
            raise ConfigurationError(f"models {path!r} is not a declarative base")
        return cls.from_base(base)

    def register(self, model: type[Any], name: str | None = None) -> None:
        """Register one mapped class.

        Args:
            model: The class.
            name: The name steps use; its class name by default.

        Raises:
            ConfigurationError: It is not mapped, or the name is taken by another.
        """
        from sqlalchemy import Table

        if isinstance(model, Table):
            raise ConfigurationError(
                f"table {model.name!r} is a plain Table, not a mapped class: map it "
                f"(class {model.name.title().replace('_', '')}(Base): __table__ = {model.name}) "
                "and register the class"
            )
        name = check_identifier(name or model.__name__, "model name")
        try:
            mapper = inspect(model)
        except Exception as exc:
            raise ConfigurationError(f"{model!r} is not an SQLAlchemy mapped class") from exc
        existing = self._models.get(name)
        if existing is not None and existing is not model:
            raise ConfigurationError(f"model name {name!r} is already registered for {existing!r}")
        self._models[name] = model
        self._mappers[name] = mapper

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._models))

    def __len__(self) -> int:
        return len(self._models)

    def model(self, name: str) -> type[Any]:
        """The mapped class named ``name``.

        Raises:
            UnknownModelError: No class is registered under that name.
        """
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise UnknownModelError(
                f"unknown model {name!r}: registered models are {known}"
            ) from None

    def mapper(self, name: str) -> Mapper[Any]:
        """The mapper of the class named ``name``."""
        self.model(name)
        return self._mappers[name]

    def fields(self, name: str) -> frozenset[str]:
        """Attribute names of the mapped columns of ``name``."""
        found = self._fields.get(name)
        if found is None:  # asked for every step the processor checks: worked out once
            found = frozenset(attr.key for attr in self.mapper(name).column_attrs)
            self._fields[name] = found
        return found

    def key_fields(self, name: str) -> tuple[str, ...]:
        """Attribute names of the primary key of ``name``, in key order."""
        found = self._key_fields.get(name)
        if found is None:
            mapper = self.mapper(name)
            found = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
            self._key_fields[name] = found
        return found

    def check_step(self, step: Step, where: str = "") -> None:
        """Refuse a step that names an unknown model or field.

        Raises:
            UnknownModelError: The model is not registered.
            UnknownColumnError: A field is not a mapped column of the model.
        """
        known = self.fields(step.model)
        names: set[str] = set()
        for record in [
            step.data or {},
            step.key or {},
            step.expected or {},
            *(step.records or []),
            *(step.expected_records or []),
        ]:
            names.update(record)
        names.update(step.key_fields)
        if step.key is not None and set(step.key) != set(self.key_fields(step.model)):
            raise UnknownColumnError(
                f"{where}step {step.step_id!r}: {step.model} is keyed by "
                f"{self.key_fields(step.model)}, but the step's key names {tuple(step.key)}"
            )
        unknown = sorted(names - known)
        if unknown:
            raise UnknownColumnError(
                f"{where}step {step.step_id!r}: {step.model} has no field(s) "
                f"{', '.join(repr(u) for u in unknown)}; its fields are {', '.join(sorted(known))}"
            )

    def check(self, transaction: Transaction) -> None:
        """Refuse a transaction any of whose steps :meth:`check_step` refuses.

        Raises:
            UnknownModelError: A model is not registered.
            UnknownColumnError: A field is not mapped.
        """
        where = f"transaction {transaction.transaction_id}: "
        for step in transaction.steps:
            self.check_step(step, where)

    def convert(self, transaction: Transaction) -> Transaction:
        """Check a transaction and convert its values to their columns' Python types.

        What :class:`~ccat_buffering.builder.TransactionBuilder` does for steps
        given by class, for steps given by name: values converted by column
        type, Python-side ``default=``/``onupdate=`` filled in. Converting an
        already converted transaction changes nothing.

        Args:
            transaction: A built transaction.

        Returns:
            The converted transaction.

        Raises:
            UnknownModelError: A model is not registered.
            UnknownColumnError: A field is not mapped.
            TransactionValidationError: A value its column cannot take.
        """
        from ccat_buffering.columns import columns_of, convert_step, is_converted

        self.check(transaction)
        steps = []
        for index, step in enumerate(transaction.steps):
            if is_converted(step):
                steps.append(step)
                continue
            where = (
                f"transaction {transaction.transaction_id}: step {index} "
                f"({step.operation} {step.model})"
            )
            steps.append(convert_step(step, columns_of(self.model(step.model)), where))
        if all(new is old for new, old in zip(steps, transaction.steps, strict=True)):
            return transaction  # built by class: converted already
        return transaction.model_copy(update={"steps": steps})
