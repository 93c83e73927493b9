/* Optional accelerator for the per-event work of a task stream.
 *
 * `TaskTracker.absorb` in _task_stream.py is the reference: this file compiles its fast path
 * (an exact dict in the shapes the API sends) and hands every other payload to the Python
 * method unchanged, before touching any state. The result is the same update, field for field;
 * tests/test_task_tracker.py checks that property on random payload streams against the Python
 * method. Set INFERENCESH_NO_EXTENSIONS=1 to run without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Set once by `bind`: the Python side's classes and tables. */
static PyObject *fallback;      /* the Python `TaskTracker.absorb` */
static PyObject *update_type;   /* TaskUpdate */
static PyObject *progress_type; /* Progress */
static PyObject *by_code;       /* {code: TaskStatus} */
static PyObject *rank;          /* {TaskStatus: rank} */
static PyObject *terminal;      /* frozenset of terminal statuses */
static PyObject *unknown;       /* TaskStatus.UNKNOWN */

static PyObject *s_type, *s_heartbeat, *s_event, *s_fields, *s_data, *s_id, *s_status, *s_logs,
    *s_progress, *s_session_id, *s_current, *s_total, *s_output, *s_partial_output, *s_error,
    *s_raw, *s_task_id, *s_logs_seen, *s_code, *s_finished;

/* A new instance of a frozen attrs dict class, without its generated __init__ (as `new_update`
 * in _events.py does): the caller fills its __dict__. */
static PyObject *
new_instance(PyObject *type)
{
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    PyObject *obj = PyBaseObject_Type.tp_new((PyTypeObject *)type, empty, NULL);
    Py_DECREF(empty);
    return obj;
}

static int
put(PyObject *dict, PyObject *key, PyObject *value)
{
    return PyDict_SetItem(dict, key, value);
}

static PyObject *
new_progress(PyObject *current, PyObject *total)
{
    PyObject *progress = new_instance(progress_type);
    if (progress == NULL)
        return NULL;
    PyObject *fields = PyObject_GenericGetDict(progress, NULL);
    if (fields == NULL || put(fields, s_current, current) < 0 || put(fields, s_total, total) < 0) {
        Py_XDECREF(fields);
        Py_DECREF(progress);
        return NULL;
    }
    Py_DECREF(fields);
    return progress;
}

/* Mirrors `new_update`: id, status and raw always; the others only when not their default. */
static PyObject *
new_update(PyObject *id, PyObject *status, PyObject *logs, PyObject *progress,
           PyObject *partial_output, PyObject *output, PyObject *error, PyObject *session_id,
           PyObject *raw)
{
    PyObject *update = new_instance(update_type);
    if (update == NULL)
        return NULL;
    PyObject *fields = PyObject_GenericGetDict(update, NULL);
    if (fields == NULL)
        goto fail;
    if (put(fields, s_id, id) < 0 || put(fields, s_status, status) < 0 ||
        put(fields, s_raw, raw) < 0)
        goto fail;
    if (PyTuple_GET_SIZE(logs) > 0 && put(fields, s_logs, logs) < 0)
        goto fail;
    if (progress != Py_None && put(fields, s_progress, progress) < 0)
        goto fail;
    if (partial_output != Py_None && put(fields, s_partial_output, partial_output) < 0)
        goto fail;
    if (output != Py_None && put(fields, s_output, output) < 0)
        goto fail;
    if (error != Py_None && put(fields, s_error, error) < 0)
        goto fail;
    if (session_id != Py_None && put(fields, s_session_id, session_id) < 0)
        goto fail;
    Py_DECREF(fields);
    return update;
fail:
    Py_XDECREF(fields);
    Py_DECREF(update);
    return NULL;
}

/* `dict.get(key)` as a borrowed reference, Py_None when absent; NULL on error. */
static PyObject *
get(PyObject *dict, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value == NULL && !PyErr_Occurred())
        return Py_None;
    return value;
}

static int
is_number(PyObject *value)
{
    return PyLong_CheckExact(value) || PyFloat_CheckExact(value);
}

/* `a != b`, exactly as the Python operator (no identity shortcut): 1, 0, or -1 on error. */
static int
differs(PyObject *a, PyObject *b)
{
    PyObject *result = PyObject_RichCompare(a, b, Py_NE);
    if (result == NULL)
        return -1;
    int truth = PyObject_IsTrue(result);
    Py_DECREF(result);
    return truth;
}

static PyObject *
defer(PyObject *self, PyObject *obj)
{
    return PyObject_CallFunctionObjArgs(fallback, self, obj, NULL);
}

static PyObject *
absorb(PyObject *self, PyObject *obj)
{
    if (!PyDict_CheckExact(obj))
        return defer(self, obj);
    PyObject *type = get(obj, s_type);
    if (type == NULL)
        return NULL;
    if (type != Py_None) {
        if (!PyUnicode_CheckExact(type))
            return defer(self, obj);
        if (PyUnicode_Compare(type, s_heartbeat) == 0)
            return PyTuple_New(0);
    }
    PyObject *event = get(obj, s_event);
    if (event == NULL)
        return NULL;
    if (event != Py_None)
        return defer(self, obj); /* named events and deltas take the Python path */
    int partial = PyDict_Contains(obj, s_fields);
    if (partial < 0)
        return NULL;
    PyObject *payload = obj;
    if (partial) {
        PyObject *data = PyDict_GetItemWithError(obj, s_data);
        if (data == NULL) {
            if (PyErr_Occurred())
                return NULL;
            partial = 0;
        }
        else
            payload = data;
    }
    if (!PyDict_CheckExact(payload))
        return defer(self, obj);

    /* The well-formed check: anything else is validated by the Python path. */
    PyObject *tracker = PyObject_GenericGetDict(self, NULL);
    if (tracker == NULL)
        return NULL;
    PyObject *result = NULL;
    PyObject *new_logs = NULL, *progress_obj = NULL;
    PyObject *task_id = PyDict_GetItemWithError(payload, s_id);
    if (task_id == NULL) {
        if (PyErr_Occurred())
            goto done;
        task_id = PyDict_GetItemWithError(tracker, s_task_id);
        if (task_id == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "task_id");
            goto done;
        }
    }
    PyObject *code = get(payload, s_status);
    PyObject *raw_logs = get(payload, s_logs);
    PyObject *raw_progress = get(payload, s_progress);
    PyObject *session_id = get(payload, s_session_id);
    if (code == NULL || raw_logs == NULL || raw_progress == NULL || session_id == NULL)
        goto done;
    PyObject *current = NULL, *total = NULL;
    int well_formed = PyUnicode_CheckExact(task_id) && PyUnicode_GET_LENGTH(task_id) > 0 &&
                      (PyLong_CheckExact(code) || code == Py_None) &&
                      (raw_logs == Py_None || PyList_CheckExact(raw_logs)) &&
                      (session_id == Py_None || PyUnicode_CheckExact(session_id));
    if (well_formed && raw_progress != Py_None) {
        well_formed = PyDict_CheckExact(raw_progress);
        if (well_formed) {
            current = get(raw_progress, s_current);
            total = get(raw_progress, s_total);
            if (current == NULL || total == NULL)
                goto done;
            well_formed = is_number(current) && is_number(total);
        }
    }
    if (well_formed && raw_logs != Py_None) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(raw_logs); i++) {
            if (!PyUnicode_CheckExact(PyList_GET_ITEM(raw_logs, i))) {
                well_formed = 0;
                break;
            }
        }
    }
    if (!well_formed) {
        result = defer(self, obj);
        goto done;
    }

    /* Logs: a partial update lists only new lines; a snapshot lists all so far. */
    Py_ssize_t n_logs = raw_logs == Py_None ? 0 : PyList_GET_SIZE(raw_logs);
    if (n_logs == 0) {
        new_logs = PyTuple_New(0);
    }
    else {
        PyObject *seen_obj = PyDict_GetItemWithError(tracker, s_logs_seen);
        if (seen_obj == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "logs_seen");
            goto done;
        }
        Py_ssize_t seen = PyLong_AsSsize_t(seen_obj);
        if (seen == -1 && PyErr_Occurred())
            goto done;
        if (partial) {
            new_logs = PyList_AsTuple(raw_logs);
            seen += n_logs;
        }
        else {
            PyObject *rest = PyList_GetSlice(raw_logs, seen < 0 ? 0 : seen, n_logs);
            if (rest == NULL)
                goto done;
            new_logs = PyList_AsTuple(rest);
            Py_DECREF(rest);
            if (n_logs > seen)
                seen = n_logs;
        }
        if (new_logs == NULL)
            goto done;
        PyObject *seen_new = PyLong_FromSsize_t(seen);
        if (seen_new == NULL || put(tracker, s_logs_seen, seen_new) < 0) {
            Py_XDECREF(seen_new);
            goto done;
        }
        Py_DECREF(seen_new);
    }

    /* Status: the same code again changes nothing; a status never goes backwards. */
    PyObject *status = PyDict_GetItemWithError(tracker, s_status);
    if (status == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "status");
        goto done;
    }
    Py_INCREF(status);
    int status_changed = 0;
    if (code != Py_None) {
        PyObject *last = get(tracker, s_code);
        int changed = last == NULL ? -1 : differs(code, last);
        if (changed < 0 || (changed && put(tracker, s_code, code) < 0)) {
            Py_DECREF(status);
            goto done;
        }
        if (changed) {
            PyObject *new_status = get(by_code, code);
            if (new_status == NULL) {
                Py_DECREF(status);
                goto done;
            }
            if (new_status == Py_None)
                new_status = unknown;
            PyObject *new_rank = PyDict_GetItemWithError(rank, new_status);
            PyObject *old_rank = PyDict_GetItemWithError(rank, status);
            if (new_rank == NULL || old_rank == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_KeyError, "status rank");
                Py_DECREF(status);
                goto done;
            }
            int later = PyObject_RichCompareBool(new_rank, old_rank, Py_GT);
            if (later < 0 || (later && put(tracker, s_status, new_status) < 0)) {
                Py_DECREF(status);
                goto done;
            }
            if (later) {
                Py_SETREF(status, Py_NewRef(new_status));
                status_changed = 1;
            }
        }
    }

    /* Progress: a new object only when the numbers change. */
    PyObject *progress = get(tracker, s_progress);
    if (progress == NULL) {
        Py_DECREF(status);
        goto done;
    }
    progress_obj = Py_NewRef(progress);
    int progress_changed = 0;
    if (raw_progress != Py_None) {
        int changed = progress == Py_None;
        if (!changed) {
            PyObject *old = PyObject_GetAttr(progress, s_current);
            changed = old == NULL ? -1 : differs(current, old);
            Py_XDECREF(old);
            if (changed == 0) {
                old = PyObject_GetAttr(progress, s_total);
                changed = old == NULL ? -1 : differs(total, old);
                Py_XDECREF(old);
            }
        }
        if (changed < 0) {
            Py_DECREF(status);
            goto done;
        }
        if (changed) {
            Py_SETREF(progress_obj, new_progress(current, total));
            if (progress_obj == NULL || put(tracker, s_progress, progress_obj) < 0) {
                Py_DECREF(status);
                goto done;
            }
            progress_changed = 1;
        }
    }

    /* A running task's output is intermediate; only a finished task has its final output. */
    PyObject *output = get(payload, s_output);
    int is_terminal = PySet_Contains(terminal, status);
    if (output == NULL || is_terminal < 0) {
        Py_DECREF(status);
        goto done;
    }
    PyObject *partial_output = Py_None;
    if (!is_terminal) {
        partial_output = PyDict_GetItemWithError(payload, s_partial_output);
        if (partial_output == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(status);
                goto done;
            }
            partial_output = output;
        }
    }
    if (partial_output != Py_None) {
        PyObject *last = get(tracker, s_partial_output);
        int changed = last == NULL ? -1 : differs(partial_output, last);
        if (changed < 0 || (changed && put(tracker, s_partial_output, partial_output) < 0)) {
            Py_DECREF(status);
            goto done;
        }
        if (!changed)
            partial_output = Py_None;
    }
    if (!(status_changed || PyTuple_GET_SIZE(new_logs) > 0 || progress_changed ||
          partial_output != Py_None)) {
        Py_DECREF(status);
        result = PyTuple_New(0);
        goto done;
    }
    PyObject *error = get(payload, s_error);
    if (error == NULL) {
        Py_DECREF(status);
        goto done;
    }
    if (session_id != Py_None && PyUnicode_GET_LENGTH(session_id) == 0)
        session_id = Py_None;
    PyObject *update = new_update(task_id, status, new_logs, progress_obj, partial_output,
                                  is_terminal ? output : Py_None, error, session_id, payload);
    Py_DECREF(status);
    if (update == NULL)
        goto done;
    if (is_terminal && put(tracker, s_finished, Py_True) < 0) {
        Py_DECREF(update);
        goto done;
    }
    result = PyTuple_New(1);
    if (result == NULL) {
        Py_DECREF(update);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, update);
done:
    Py_XDECREF(new_logs);
    Py_XDECREF(progress_obj);
    Py_DECREF(tracker);
    return result;
}

static PyMethodDef absorb_def = {
    "absorb", absorb, METH_O,
    "Fold one decoded payload in; return the update to yield, if anything is new.",
};

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "bind() takes 8 arguments");
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyType_Check(args[2]) || !PyType_Check(args[3]) ||
        !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5]) ||
        !PyFrozenSet_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "bind() got arguments of the wrong types");
        return NULL;
    }
    Py_XSETREF(fallback, Py_NewRef(args[1]));
    Py_XSETREF(update_type, Py_NewRef(args[2]));
    Py_XSETREF(progress_type, Py_NewRef(args[3]));
    Py_XSETREF(by_code, Py_NewRef(args[4]));
    Py_XSETREF(rank, Py_NewRef(args[5]));
    Py_XSETREF(terminal, Py_NewRef(args[6]));
    Py_XSETREF(unknown, Py_NewRef(args[7]));
    return PyDescr_NewMethod((PyTypeObject *)args[0], &absorb_def);
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(cls, fallback, update, progress, by_code, rank, terminal, unknown): the compiled "
     "`absorb` method for `cls`."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "inferencesh._speedups",
    "Optional compiled fast path of TaskTracker.absorb.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_type, "type"},         {&s_heartbeat, "heartbeat"},
        {&s_event, "event"},       {&s_fields, "fields"},
        {&s_data, "data"},         {&s_id, "id"},
        {&s_status, "status"},     {&s_logs, "logs"},
        {&s_progress, "progress"}, {&s_session_id, "session_id"},
        {&s_current, "current"},   {&s_total, "total"},
        {&s_output, "output"},     {&s_partial_output, "partial_output"},
        {&s_error, "error"},       {&s_raw, "raw"},
        {&s_task_id, "task_id"},   {&s_logs_seen, "logs_seen"},
        {&s_code, "_code"},        {&s_finished, "finished"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
