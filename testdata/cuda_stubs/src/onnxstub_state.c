/* onnxstub.capi._pybind_state: a real extension that needs libxonnxruntime.so.1 ($ORIGIN). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int stub_libxonnxruntime(void);

static PyObject *version(PyObject *self, PyObject *args) {
    return PyLong_FromLong(stub_libxonnxruntime());
}

static PyMethodDef methods[] = {
    {"version", version, METH_NOARGS, "Calls into libxonnxruntime."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "onnxstub.capi._pybind_state", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pybind_state(void) { return PyModule_Create(&module); }
