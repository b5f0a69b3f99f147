/* cupystub._libs.xblas: a real extension with no RPATH by design, like cupy's
 * cupy_backends/cuda/libs/cublas: it needs libxcublas.so.12, which the package loads
 * itself (by path, through ctypes) before importing it, as cupy does through
 * cuda-pathfinder. Imported alone it fails; imported through the package it loads. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int stub_libxcublas(void);

static PyObject *answer(PyObject *self, PyObject *args) {
    return PyLong_FromLong(stub_libxcublas());
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, "Calls into libxcublas.so.12."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cupystub._libs.xblas", NULL, -1, methods};

PyMODINIT_FUNC PyInit_xblas(void) { return PyModule_Create(&module); }
