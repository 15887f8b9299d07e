package modelserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Seldon's "reason" strings, as the python wrapper and executor use them.
const (
	reasonBadData       = "MICROSERVICE_BAD_DATA"
	reasonInternalError = "MICROSERVICE_INTERNAL_ERROR"
	reasonNotFound      = "NOT_FOUND"
	reasonMethod        = "METHOD_NOT_ALLOWED"
	reasonOverloaded    = "SERVICE_UNAVAILABLE"
)

// requestError is a failure the client can act on: it carries the HTTP
// status to answer with and a message that says what was wrong.
type requestError struct {
	status int
	reason string
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, reason: reasonBadData, msg: fmt.Sprintf(format, args...)}
}

// statusOf maps any error to the HTTP status and Seldon reason it is
// answered with. Errors that are not requestErrors are internal: the
// client gets a generic message and the details go to the log.
func statusOf(err error) (status int, reason, msg string) {
	var re *requestError
	if errors.As(err, &re) {
		return re.status, re.reason, re.msg
	}
	return http.StatusInternalServerError, reasonInternalError, "internal error while predicting; see the server log"
}

// seldonStatus is Seldon's error body: {"status":{"code":..,"info":..,
// "reason":..,"status":"FAILURE"}} (the JSON form of seldon.protos.Status,
// which the executor and Seldon's clients parse).
type seldonStatus struct {
	Status struct {
		Code   int    `json:"code"`
		Info   string `json:"info"`
		Reason string `json:"reason"`
		Status string `json:"status"`
	} `json:"status"`
}

func writeSeldonError(w http.ResponseWriter, err error) int {
	status, reason, msg := statusOf(err)
	var body seldonStatus
	body.Status.Code = status
	body.Status.Info = msg
	body.Status.Reason = reason
	body.Status.Status = "FAILURE"
	writeJSONError(w, status, body)
	return status
}

// v2Error is the Open Inference Protocol's error body.
type v2Error struct {
	Error string `json:"error"`
}

func writeV2Error(w http.ResponseWriter, err error) int {
	status, _, msg := statusOf(err)
	writeJSONError(w, status, v2Error{Error: msg})
	return status
}

func writeJSONError(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil { // cannot happen for these two plain structs
		b = []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
