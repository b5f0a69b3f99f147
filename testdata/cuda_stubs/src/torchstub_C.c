/* torchstub._C: a real CPython extension that calls into lib/libxtorch_python.so,
 * which pulls in the CUDA-13-like stub libraries through its DT_RPATH. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int stub_libxtorch_python(void);

static PyObject *cuda_answer(PyObject *self, PyObject *args) {
    return PyLong_FromLong(stub_libxtorch_python());
}

static PyMethodDef methods[] = {
    {"cuda_answer", cuda_answer, METH_NOARGS, "Sum over the stub library chain."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "torchstub._C", NULL, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
