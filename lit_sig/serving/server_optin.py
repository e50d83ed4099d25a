"""The LIT routes that are off unless the server is started with them: loading, stored data, files.

`OptInRoutes` (a mixin of `server.HardenedLitApp`) refuses `/create_model` and
`/create_dataset` without `allow_loading`; `/post_new_data`, `/fetch_new_data`
and `/remove_new_data` without `allow_new_data` (and keeps posted data within
`max_new_data_bytes`); `/save_datapoints` and `/load_datapoints` without a
`datapoints_dir`, and confines their paths to it.
"""

import http
import json
import pathlib
from typing import Any

from lit_nlp.api import dataset as lit_dataset

from lit_sig.serving import server_requests
from lit_sig.serving.server_limits import RequestError


class OptInRoutes:
    """LIT's loading, storage and file routes, each refused (403) unless switched on."""

    def _check_loading(self) -> None:
        if not self._allow_loading:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Loading models and data sets from the UI is off; start the server with --allow_loading.",
            )

    def _check_new_data(self) -> None:
        if not self._allow_new_data:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Storing data on the server is off; start the server with --allow_new_data.",
            )

    def _confine(self, path: str | None) -> str:
        """`path` (relative to the datapoints folder, or absolute inside it), resolved."""
        if self._datapoints_dir is None:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Saving and loading datapoints is off; start the server with --datapoints_dir DIR.",
            )
        if not path:
            raise ValueError('Must provide a "path" inside the datapoints directory.')
        resolved = (self._datapoints_dir / path).resolve()
        # LIT also reads and writes `path` + ".lit.jsonl" and + ".lit.jsonl.spec".
        suffixes = ("", lit_dataset.LIT_FILE_EXTENSION, lit_dataset.LIT_FILE_EXTENSION + lit_dataset.LIT_SPEC_EXTENSION)
        for suffix in suffixes:
            touched = pathlib.Path(str(resolved) + suffix).resolve()
            if touched == self._datapoints_dir or not touched.is_relative_to(self._datapoints_dir):
                raise RequestError(
                    http.HTTPStatus.FORBIDDEN, "The path must be a file inside the datapoints directory."
                )
        return str(resolved)

    def _create_model(self, data: Any, model_name: str | None = None, **kw: Any) -> Any:
        self._check_loading()
        server_requests.check_init_args(self._model_loaders.get(model_name), model_name, data)
        result = super()._create_model(data, model_name=model_name, **kw)
        self._rekey_caches()
        return result

    def _create_dataset(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        self._check_loading()
        server_requests.check_init_args(self._dataset_loaders.get(dataset_name), dataset_name, data)
        return super()._create_dataset(data, dataset_name=dataset_name, **kw)

    def _save_datapoints(self, data: Any, dataset_name: str | None = None, path: str | None = None, **kw: Any) -> Any:
        return super()._save_datapoints(data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _load_datapoints(
        self, unused_data: Any, dataset_name: str | None = None, path: str | None = None, **kw: Any
    ) -> Any:
        return super()._load_datapoints(unused_data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _push_ui_state(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        if self.ui_state_tracker is None:
            raise RequestError(http.HTTPStatus.NOT_FOUND, "UI state sync is off (it is for notebooks).")
        return super()._push_ui_state(data, dataset_name=dataset_name, **kw)

    def _post_new_data(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        size = len(json.dumps(data["inputs"]))
        self._reserve_new_data(size)
        try:
            result = super()._post_new_data(data, dataset_name=dataset_name, **kw)
        except BaseException:
            self._reserve_new_data(-size)
            raise
        with self._new_data_lock:
            self._new_data_sizes[result["load"].split("=", 1)[1]] = size
        return result

    def _reserve_new_data(self, size: int) -> None:
        """Counts `size` more bytes of posted data (negative: fewer); 413 past `max_new_data_bytes`."""
        limit = self._limits.max_new_data_bytes
        with self._new_data_lock:
            if size > 0 and self._new_data_bytes + size > limit:
                raise RequestError(
                    http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"The server keeps at most {limit:,} bytes of posted data (max_new_data_bytes);"
                    f" {self._new_data_bytes:,} are in use and these inputs take {size:,}."
                    " Remove some with /remove_new_data.",
                )
            self._new_data_bytes += size

    def _fetch_new_data(self, unused_data: Any, **kw: Any) -> Any:
        self._check_new_data()
        return super()._fetch_new_data(unused_data, **kw)

    def _remove_new_data(self, unused_data: Any, saved_datapoints_id: str | None = None, **kw: Any) -> Any:
        self._check_new_data()
        result = super()._remove_new_data(unused_data, saved_datapoints_id=saved_datapoints_id, **kw)
        with self._new_data_lock:
            size = self._new_data_sizes.pop(saved_datapoints_id or "", 0)
        self._reserve_new_data(-size)
        return result
