<?php

declare(strict_types=1);

namespace Hotsock;

/** The server sent bytes this SDK cannot decode; the worker exits (the stream cannot be resynchronised). */
final class ProtocolError extends HotsockException
{
}
