package proxy

// SocketQuiet exports socketQuiet to the tests of package proxy_test.
var SocketQuiet = socketQuiet
