package nbclient

// Response codes of a resp ("code"), in Leshan's spelling: the LwM2M /
// CoAP response code the device answered.
const (
	CodeCreated                  = "CREATED"  // 2.01
	CodeDeleted                  = "DELETED"  // 2.02
	CodeValid                    = "VALID"    // 2.03
	CodeChanged                  = "CHANGED"  // 2.04
	CodeContent                  = "CONTENT"  // 2.05
	CodeContinue                 = "CONTINUE" // 2.31
	CodeBadRequest               = "BAD_REQUEST"
	CodeUnauthorized             = "UNAUTHORIZED"
	CodeBadOption                = "BAD_OPTION"
	CodeForbidden                = "FORBIDDEN"
	CodeNotFound                 = "NOT_FOUND"
	CodeMethodNotAllowed         = "METHOD_NOT_ALLOWED"
	CodeNotAcceptable            = "NOT_ACCEPTABLE"
	CodeRequestEntityIncomplete  = "REQUEST_ENTITY_INCOMPLETE"
	CodeConflict                 = "CONFLICT"
	CodePreconditionFailed       = "PRECONDITION_FAILED"
	CodeRequestEntityTooLarge    = "REQUEST_ENTITY_TOO_LARGE"
	CodeUnsupportedContentFormat = "UNSUPPORTED_CONTENT_FORMAT"
	CodeUnprocessableEntity      = "UNPROCESSABLE_ENTITY"
	CodeInternalServerError      = "INTERNAL_SERVER_ERROR"
	CodeNotImplemented           = "NOT_IMPLEMENTED"
	CodeBadGateway               = "BAD_GATEWAY"
	CodeServiceUnavailable       = "SERVICE_UNAVAILABLE"
	CodeGatewayTimeout           = "GATEWAY_TIMEOUT"
	CodeProxyingNotSupported     = "PROXYING_NOT_SUPPORTED"
)

// IsSuccess reports whether code is a success (2.xx) code.
func IsSuccess(code string) bool {
	switch code {
	case CodeCreated, CodeDeleted, CodeValid, CodeChanged, CodeContent, CodeContinue:
		return true
	}
	return false
}
