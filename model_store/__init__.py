"""Model packages, the registry of a data folder, approval and ROI overrides.

- :mod:`model_store.card`: the ``model.yaml`` schema (:class:`~model_store.card.ModelCard`).
- :mod:`model_store.package`: reading folder/zip packages and the import checks.
- :mod:`model_store.registry`: :class:`~model_store.registry.ModelRegistry` (tables
  ``models``, ``roi_overrides``, ``audit`` in ``<data_dir>/contourd.db``).
- :mod:`model_store.approved`: :class:`~model_store.approved.ApprovedModel`, what runs.
- :mod:`model_store.tg263`: TG-263 structure names and naming warnings.

See docs/models.md.
"""
